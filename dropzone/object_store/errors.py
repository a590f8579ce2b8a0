"""What an object-store error means: one table and one ``translate``.

``S3_ERROR_MAP`` sends every library exception (boto3, botocore, urllib3,
``http.client``, the socket layer) and every S3 error code a store answers
with to one ``dropzone.errors`` class; ``translate`` is the only code that
reads it, and the only place in ``dropzone/object_store/`` that looks at a
library exception. Keys are of three kinds, most telling first:

* an S3 error code (``ClientError``'s ``Error.Code``): the store answered and
  said why;
* an HTTP status, for a code not in the table (HEAD answers carry no body, so
  their code is the bare status, ``"404"``);
* an exception class: the request got no answer (or none was sent). The most
  specific class that matches wins, so ``NoCredentialsError`` is an
  authentication problem although every ``BotoCoreError`` is transient.

Messages name the store, the bucket and the action, then the S3 code, the
status or the exception's type, never the exception's text (it can quote
request headers) and never a credential.
"""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Iterator

import boto3.exceptions
import botocore.exceptions as bce
import urllib3.exceptions

from dropzone import errors

Target = tuple[type[errors.DropzoneError], str]

_GONE = (errors.ExportNotFoundError, "does not exist")
_DENIED = (errors.AuthenticationError, "access denied")
_REJECTED = (errors.IntegrityError, "the store rejected the body")
_BUSY = (errors.StorageUnavailableError, "the store is unavailable")

S3_ERROR_MAP: dict[str | int | type[BaseException], Target] = {
    # ----- S3 error codes -----
    "NoSuchBucket": (errors.InvalidConfigError, "the bucket does not exist"),
    "NoSuchKey": _GONE,
    "NotFound": _GONE,
    "404": _GONE,
    "AccessDenied": _DENIED,
    "AllAccessDisabled": _DENIED,
    "AuthorizationHeaderMalformed": _DENIED,
    "ExpiredToken": _DENIED,
    "InvalidAccessKeyId": _DENIED,
    "InvalidToken": _DENIED,
    "SignatureDoesNotMatch": _DENIED,
    "BadDigest": _REJECTED,
    "IncompleteBody": _REJECTED,
    "InvalidDigest": _REJECTED,
    "XAmzContentSHA256Mismatch": _REJECTED,
    "InternalError": _BUSY,
    "OperationAborted": _BUSY,
    "RequestLimitExceeded": _BUSY,
    "RequestTimeTooSkewed": _BUSY,
    "RequestTimeout": _BUSY,
    "ServiceUnavailable": _BUSY,
    "SlowDown": _BUSY,
    "Throttling": _BUSY,
    "ThrottlingException": _BUSY,
    # ----- HTTP statuses of codes not named above (5xx: see translate) -----
    401: _DENIED,
    403: _DENIED,
    404: _GONE,
    408: _BUSY,
    429: _BUSY,
    # ----- no answer -----
    # Any other answer: retried a bounded number of times by the activity policy.
    bce.ClientError: (errors.StorageUnavailableError, "unexpected reply"),
    bce.NoCredentialsError: (errors.AuthenticationError, "no credentials configured"),
    bce.PartialCredentialsError: (errors.AuthenticationError, "no credentials configured"),
    bce.CredentialRetrievalError: (errors.AuthenticationError, "no credentials configured"),
    bce.ParamValidationError: (errors.InvalidConfigError, "invalid request parameters"),
    urllib3.exceptions.ProxySchemeUnsupported: (errors.InvalidConfigError, "unsupported proxy scheme"),
    # Connecting, timeouts, a connection closed mid-body, a request botocore
    # could not resend (a streamed body is read once): all may pass.
    bce.BotoCoreError: _BUSY,
    boto3.exceptions.Boto3Error: _BUSY,
    urllib3.exceptions.HTTPError: _BUSY,
    http.client.HTTPException: _BUSY,
    OSError: _BUSY,  # socket errors and timeouts (TimeoutError is one)
}


def _lookup(exc: BaseException) -> tuple[Target, str] | None:
    """The table's entry for ``exc`` and the detail the message names."""
    detail = type(exc).__name__
    if isinstance(exc, bce.ClientError):
        response = exc.response if isinstance(exc.response, dict) else {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = code or str(status)
        if code in S3_ERROR_MAP:
            return S3_ERROR_MAP[code], detail
        if status in S3_ERROR_MAP:
            return S3_ERROR_MAP[status], detail
        if status >= 500:
            return _BUSY, detail
    found: type[BaseException] | None = None
    for key in S3_ERROR_MAP:
        # The most specific class wins (NoCredentialsError over BotoCoreError).
        if isinstance(key, type) and isinstance(exc, key) and (found is None or issubclass(key, found)):
            found = key
    return None if found is None else (S3_ERROR_MAP[found], detail)


@contextlib.contextmanager
def translate(where: str) -> Iterator[None]:
    """Re-raise a library exception from the block as its ``dropzone.errors`` class.

    ``where`` names the store and the action (``object storage URL/bucket: put KEY``).
    Our own errors pass unchanged; an exception the table does not know (a bug)
    propagates as it is, for the activity layer to report as one.
    """
    try:
        yield
    except errors.DropzoneError:
        raise
    except Exception as exc:
        found = _lookup(exc)
        if found is None:
            raise
        (cls, phrase), detail = found
        raise cls(f"{where}: {phrase} ({detail})") from exc
