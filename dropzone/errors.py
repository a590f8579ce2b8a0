"""Every error the product raises, and whether retrying can help.

Adapters catch their library's exceptions (paramiko, boto3, psycopg, OSError)
in one place each and re-raise one of these with ``raise ... from exc``.
Nothing above the adapters ever sees a library exception, and the activity
layer turns these into Temporal failures using only ``code`` and
``retryable`` — so this module alone decides what Temporal retries.

Messages name the thing that is wrong (field, file, connection id, host) and
never contain a credential.

    DropzoneError                      code            retryable
    ├── PermanentError                                 no  — an operator must act
    │   ├── InvalidDraftError          INVALID_DRAFT
    │   ├── InvalidConfigError         INVALID_CONFIG
    │   ├── ConnectionNotFoundError    CONNECTION_NOT_FOUND
    │   ├── ConnectionInactiveError    CONNECTION_INACTIVE
    │   ├── ExportNotFoundError        EXPORT_NOT_FOUND
    │   ├── TokenNotFoundError         TOKEN_NOT_FOUND
    │   ├── ConfigKeyError             CONFIG_KEY_UNAVAILABLE
    │   ├── ConfigBindingError         CONFIG_ROW_MISMATCH
    │   ├── PayloadKeyError            PAYLOAD_KEY_UNAVAILABLE
    │   ├── AuthenticationError        AUTH_FAILED
    │   ├── HostKeyError               HOST_KEY_MISMATCH
    │   │   └── HostKeyUnknownError    HOST_KEY_UNKNOWN
    │   ├── PermissionDeniedError      PERMISSION_DENIED
    │   ├── MissingDirectoryError      MISSING_DIRECTORY
    │   ├── DeliveryConflictError      DELIVERY_CONFLICT
    │   ├── IntegrityError             INTEGRITY_MISMATCH
    │   ├── MalformedAckError          MALFORMED_ACK
    │   ├── UnsafePathError            UNSAFE_PATH
    │   └── SshAlgorithmError          SSH_ALGORITHM_MISMATCH
    └── TransientError                                 yes — Temporal retries with backoff
        ├── DropzoneUnavailableError   DROPZONE_UNAVAILABLE
        ├── StorageUnavailableError    STORAGE_UNAVAILABLE
        ├── LedgerUnavailableError     DATABASE_UNAVAILABLE
        ├── TemporalUnavailableError   TEMPORAL_UNAVAILABLE
        ├── UnexpectedError            INTERNAL_ERROR  (any exception that is not ours: a bug)
        └── AckNotYetAvailable         ACK_PENDING  (the polling signal, not a fault)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DropzoneError(Exception):
    """Base of every error this project raises on purpose."""

    code: str = "INTERNAL"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, Any]:
        """The shape stored in ``erp_export.error_json`` and shown to operators."""
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return self.message


class PermanentError(DropzoneError):
    """Retrying the same attempt cannot help."""

    retryable = False


class TransientError(DropzoneError):
    """The same attempt may succeed later (network, server down, timeout)."""

    retryable = True


class InvalidDraftError(PermanentError):
    code = "INVALID_DRAFT"

    def __init__(self, message: str, *, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields = list(fields)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "fields": self.fields}


class InvalidConfigError(PermanentError):
    code = "INVALID_CONFIG"


class ConnectionNotFoundError(PermanentError):
    code = "CONNECTION_NOT_FOUND"


class ConnectionInactiveError(PermanentError):
    """An operator deactivated the connection: no new attempt, no ack poll on it."""

    code = "CONNECTION_INACTIVE"


class ExportNotFoundError(PermanentError):
    code = "EXPORT_NOT_FOUND"


class TokenNotFoundError(PermanentError):
    code = "TOKEN_NOT_FOUND"


class ConfigKeyError(PermanentError):
    """A connection's config cannot be decrypted with the configured keys."""

    code = "CONFIG_KEY_UNAVAILABLE"


class PayloadKeyError(PermanentError):
    """A Temporal payload is under a key id DROPZONE_PAYLOAD_KEYS does not hold, or does not decrypt."""

    code = "PAYLOAD_KEY_UNAVAILABLE"


class ConfigBindingError(PermanentError):
    """A connection's stored config was encrypted for another connection (row swap)."""

    code = "CONFIG_ROW_MISMATCH"


class AuthenticationError(PermanentError):
    code = "AUTH_FAILED"


class HostKeyError(PermanentError):
    """The server's host key differs from the pinned one."""

    code = "HOST_KEY_MISMATCH"


class HostKeyUnknownError(HostKeyError):
    """No host key is pinned: trusting a server's key is an explicit operator act."""

    code = "HOST_KEY_UNKNOWN"


class PermissionDeniedError(PermanentError):
    code = "PERMISSION_DENIED"


class MissingDirectoryError(PermanentError):
    code = "MISSING_DIRECTORY"


class DeliveryConflictError(PermanentError):
    """The final name already holds different bytes: never overwrite an order."""

    code = "DELIVERY_CONFLICT"


class IntegrityError(PermanentError):
    """Bytes read back differ from what was written or stored."""

    code = "INTEGRITY_MISMATCH"


class MalformedAckError(PermanentError):
    code = "MALFORMED_ACK"


class UnsafePathError(PermanentError):
    """A symbolic link (or other non-regular file) where the dropzone needs a file or folder.

    Links below export_path and ack_path are never followed: the ERP could point
    them anywhere the worker may read or write.
    """

    code = "UNSAFE_PATH"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path  # the link, when it is a folder the worker would write into


class SshAlgorithmError(PermanentError):
    """The SSH server and this connection share no allowed algorithm of some kind."""

    code = "SSH_ALGORITHM_MISMATCH"


class DropzoneUnavailableError(TransientError):
    code = "DROPZONE_UNAVAILABLE"


class StorageUnavailableError(TransientError):
    code = "STORAGE_UNAVAILABLE"


class LedgerUnavailableError(TransientError):
    code = "DATABASE_UNAVAILABLE"


class TemporalUnavailableError(TransientError):
    code = "TEMPORAL_UNAVAILABLE"


class UnexpectedError(TransientError):
    """Stands in for an exception that is not ours (``activities.failures``).

    Its message names only the exception's type: a library's text may quote SQL
    parameters, paths or customer data. Retryable, as a bug fixed by a deploy
    or a passing fault (a lock timeout) lets the same attempt finish.
    """

    code = "INTERNAL_ERROR"


class AckNotYetAvailable(TransientError):
    """Raised by the ack poll so that Temporal's retry schedule does the polling."""

    code = "ACK_PENDING"


# Error codes produced by the workflow itself rather than by an adapter.
ACK_TIMEOUT = "ACK_TIMEOUT"
ACTIVITY_TIMEOUT = "ACTIVITY_TIMEOUT"
# The retry_export Update refused: the export is not FAILED and waiting.
RETRY_REJECTED = "RETRY_REJECTED"
# A status callback the receiver did not take (retried; GAVE_UP after the window).
WEBHOOK_UNDELIVERED = "WEBHOOK_UNDELIVERED"
# The ack listener handed an answer to a run that does not wait for it.
ACK_NOT_FOR_THIS_RUN = "ACK_NOT_FOR_THIS_RUN"
