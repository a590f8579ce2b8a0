"""Status callbacks: the event an order backend receives, and how it is signed.

Signed as the Standard Webhooks specification defines it (the ``standardwebhooks``
library verifies it in most languages): three headers,

    webhook-id         the event id (the receiver's idempotency key)
    webhook-timestamp  Unix seconds of this delivery attempt
    webhook-signature  "v1," + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}"))

where the secret is the base64 part of the connection's ``whsec_…`` secret. The
body is the event as compact JSON; it is signed as sent, byte for byte.

No Temporal imports: the workflow builds events, an activity sends them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID, uuid5

from pydantic import BaseModel, ConfigDict

SECRET_PREFIX = "whsec_"
# Standard Webhooks: secrets of 24 to 64 random bytes.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
MAX_URL_CHARS = 2048

WebhookEventType = Literal["export.sent", "export.acked", "export.failed", "export.retry_started"]
WebhookEventStatus = Literal["PENDING", "SENT", "ACKED", "FAILED"]

# What each event means for the order backend's draft (README "Status callbacks").
EVENT_TYPE_FOR_STATUS: dict[str, WebhookEventType] = {
    "SENT": "export.sent",
    "ACKED": "export.acked",
    "FAILED": "export.failed",
    "PENDING": "export.retry_started",
}


class WebhookEvent(BaseModel):
    """One transition of one export, as the receiver gets it (the JSON body)."""

    model_config = ConfigDict(frozen=True)

    event_id: UUID
    type: WebhookEventType
    draft_order_id: UUID
    export_id: UUID | None
    attempt: int
    status: WebhookEventStatus
    erp_order_id: str | None = None
    # {"code": ..., "message": ...} of a FAILED attempt (ErrorInfo.to_json()).
    error: dict[str, Any] | None = None
    occurred_at: datetime

    def body(self) -> bytes:
        """The exact bytes that are sent and signed."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False).encode()


def sent_event_id(export_id: UUID) -> UUID:
    """The SENT event's id, the same wherever it is sent from (an attempt is SENT once), so
    that a receiver sees a try repeated by the workflow as the same event."""
    return uuid5(export_id, "export.sent")


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret; ValueError (never quoting it) when malformed."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with '{SECRET_PREFIX}' followed by base64 (a Standard Webhooks secret)")
    encoded = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after '{SECRET_PREFIX}' is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return key


def new_secret() -> str:
    """A fresh ``whsec_`` secret of 32 random bytes."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(secret: str, event: WebhookEvent, body: bytes, timestamp: int) -> dict[str, str]:
    msg_id = str(event.event_id)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def validate_webhook_url(value: str) -> str:
    """An absolute http(s) URL; ValueError (never quoting it) otherwise."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise ValueError(f"must be an http:// or https:// URL of at most {MAX_URL_CHARS} characters")
    if any(ord(c) <= 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    return value


def describe_url(url: str) -> str:
    """``scheme://host:port/path`` for messages: never user info or a query (they may hold tokens)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
