"""File names and object keys. Pure functions, no I/O.

Every name that reaches a transport goes through ``is_safe_filename``: the
dropzone adapters join these names onto configured directories, so a name
with a separator, a leading dot or ``..`` could otherwise write or move a
file outside them. ``parse_ack_name`` applies the same rule to names the ERP
(or anyone with write access to the ack directory) put there.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Literal
from uuid import UUID

PROCESSED_DIR = "processed"
ERROR_DIR = "error"

ACK_PREFIX = "ack_"
ERROR_ACK_PREFIX = "error_"
TMP_SUFFIX = ".tmp"
MAX_NAME_BYTES = 255  # NAME_MAX on Linux and what SFTP servers accept

# fullmatch on a str pattern: "$" would also accept a trailing "\n".
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_TOKEN = re.compile(r"[a-z0-9]{1,32}")
_EXECUTION_TOKEN = re.compile(r"r([0-9]{1,9})x[a-z0-9]+")

AckKind = Literal["ack", "error"]


def is_safe_filename(name: str) -> bool:
    """A plain file name that cannot leave the directory it is joined to.

    Only ``[A-Za-z0-9._-]``, no leading dot (hidden files, ``.``, ``..``),
    no ``..`` anywhere (stricter than needed without separators, but no
    legitimate name has it and it keeps every reviewer's question answered),
    at most 255 bytes. ASCII-only, so characters and bytes agree.
    """
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_BYTES
        and _SAFE_NAME.fullmatch(name) is not None
        and not name.startswith(".")
        and ".." not in name
    )


def _require_safe(name: str, what: str) -> str:
    if not is_safe_filename(name):
        # repr() keeps control characters visible; the cap keeps a hostile
        # name from flooding the message.
        shown = f": {name[:80]!r}" if isinstance(name, str) else ""
        raise ValueError(f"unsafe {what}{shown}")
    return name


def _as_uuid(value: UUID | str) -> UUID:
    # Workflow payloads may carry UUIDs as strings; both mean the same id.
    return value if isinstance(value, UUID) else UUID(str(value))


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        # A naive time would silently use the worker's local zone.
        raise ValueError("created_at must be timezone-aware")
    return moment.astimezone(timezone.utc)


def export_filename(
    draft_order_id: UUID | str, created_at: datetime, export_id: UUID | str
) -> str:
    """``sales_order_<8 hex of draft>_<YYYYMMDD_HHMMSS UTC>_<8 hex of export id>.json``."""
    draft = _as_uuid(draft_order_id).hex[:8]
    stamp = _utc(created_at).strftime("%Y%m%d_%H%M%S")
    export = _as_uuid(export_id).hex[:8]
    return f"sales_order_{draft}_{stamp}_{export}.json"


def storage_key(org_id: UUID | str, filename: str) -> str:
    """``exports/<org_id>/<filename>``: the object key of an export's stored copy."""
    return f"exports/{_as_uuid(org_id)}/{_require_safe(filename, 'export filename')}"


def tmp_name(filename: str, token: str) -> str:
    """``<filename>.<token>.tmp``: unique per execution so racing writers never share it."""
    _require_safe(filename, "export filename")
    if not isinstance(token, str) or _TOKEN.fullmatch(token) is None:
        raise ValueError("tmp token must be 1-32 characters of [a-z0-9]")
    return _require_safe(f"{filename}.{token}{TMP_SUFFIX}", "tmp name")


def execution_token(attempt: int, unique: str) -> str:
    """``r<attempt>x<unique>``: a tmp token that also says which activity attempt wrote it.

    A later attempt of the same delivery may then remove the ``.tmp`` files of
    earlier attempts (left behind by a worker that died mid-upload) without
    ever touching the file of an attempt newer than itself.
    """
    token = f"r{int(attempt)}x{unique}"
    if _TOKEN.fullmatch(token) is None:
        raise ValueError("execution token must be 1-32 characters of [a-z0-9]")
    return token


def superseded_tmp_attempt(name: str, filename: str) -> int | None:
    """The attempt that wrote ``name`` if it is a ``.tmp`` of ``filename`` with an
    ``execution_token``; None for every other name."""
    prefix = f"{filename}."
    if not name.startswith(prefix) or not name.endswith(TMP_SUFFIX):
        return None
    match = _EXECUTION_TOKEN.fullmatch(name[len(prefix) : -len(TMP_SUFFIX)])
    return int(match.group(1)) if match else None


def ack_name(filename: str) -> str:
    """``ack_<filename>``: the ERP's success acknowledgement."""
    return _require_safe(ACK_PREFIX + _require_safe(filename, "export filename"), "ack name")


def error_ack_name(filename: str) -> str:
    """``error_<filename>``: the ERP's failure acknowledgement."""
    return _require_safe(ERROR_ACK_PREFIX + _require_safe(filename, "export filename"), "ack name")


def parse_ack_name(name: str) -> tuple[AckKind, str] | None:
    """``("ack" | "error", export filename)`` for an ack file name, else None.

    None for anything unsafe (separators, NUL, control characters, ``..``,
    leading dots), for ``*.tmp`` (the ERP may still be writing it), for an
    empty export name and for every other name in the directory.
    """
    if not is_safe_filename(name) or name.endswith(TMP_SUFFIX):
        return None
    kind: AckKind
    if name.startswith(ACK_PREFIX):
        kind, filename = "ack", name[len(ACK_PREFIX) :]
    elif name.startswith(ERROR_ACK_PREFIX):
        kind, filename = "error", name[len(ERROR_ACK_PREFIX) :]
    else:
        return None
    if not is_safe_filename(filename):
        return None
    return kind, filename
