"""Ack file bodies written by the ERP (``ack_``/``error_`` files, README "Operating it"). Pure parsing, no I/O.

    ack_<file>    {"status": "ACKED", "erp_order_id": "SO-…", "processed_at": "…Z"}
    error_<file>  {"status": "FAILED", "error_code": "…", "message": "…",
                   "processed_at": "…Z"}

Decisions (each one turns a doubtful file into ``MalformedAckError``, which
moves it to ``<ack_path>/error/`` for an operator, rather than guessing):

* at most ``MAX_ACK_BYTES``; callers read ``MAX_ACK_BYTES + 1`` so that an
  oversized file is recognised without reading all of it;
* UTF-8 only; a leading UTF-8 BOM is tolerated and stripped, because Windows
  tools behind many ERPs write one and it changes nothing about the content;
* the body must be one JSON object whose ``status`` matches the file name's
  kind: an ``ack_`` file saying FAILED (or an ``error_`` file saying ACKED)
  contradicts itself, and either reading could be the wrong one;
* unknown extra keys are ignored (ERPs like to add their own);
* ``erp_order_id`` and ``error_code`` must be non-blank single-line text
  without control characters (C0, DEL, C1, bidirectional overrides), since
  they go into database columns, terminals and UIs: an id is refused rather
  than edited, as an edited id could name another order;
* ``message`` is free text, made safe instead (``terminal_safe``): NUL (which
  PostgreSQL text/jsonb cannot store) becomes U+FFFD, escape sequences are
  removed whole, line breaks become spaces, other control characters go; it is
  cut at ``MAX_MESSAGE_CHARS``, because refusing a genuine failure report over
  its wording would leave the export waiting forever. What the ERP really
  wrote is kept, escaped (``\\x1b``), as ``message_raw`` in ``error_json``;
* ``processed_at`` must be an RFC 3339 timestamp with an offset; it is kept
  in UTC.

Messages name the file and the field, never the body's content.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import pydantic_core
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    StringConstraints,
    ValidationError,
)

from dropzone.errors import MalformedAckError
from dropzone.export_v1 import validation_problems
from dropzone.naming import is_safe_filename

MAX_ACK_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 4000

_BOM = b"\xef\xbb\xbf"

AckKind = Literal["ack", "error"]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


# --- text a terminal would act on ------------------------------------------

# C0, DEL, C1 (0x9b is a one-byte CSI to many terminals) and the bidirectional
# marks, embeddings, overrides and isolates (they reorder what a screen shows).
_CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROL = re.compile(f"[{_CONTROL_CLASS}]")
# ECMA-48 sequences, removed whole so that "\x1b[31mred" reads "red": CSI
# (ESC [ or 0x9b) up to its final byte; OSC, DCS, SOS, PM and APC strings up to
# BEL or ST (or the end: a terminal would swallow the rest too); other ESC pairs.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
_LINE_BREAKS = re.compile(r"[\t\n\v\f\r\x85\u2028\u2029]+")
_TO_ESCAPE = re.compile(f"[\\\\{_CONTROL_CLASS}]")


def terminal_safe(text: str) -> str:
    """``text`` without anything a terminal acts on: one line, no escapes, no controls.

    For ERP-written text on parse, and again for every cell the CLI prints
    (rows recorded before this existed, file names, anything else from outside).
    """
    text = text.replace("\x00", "\ufffd")
    text = _ESCAPE_SEQUENCE.sub("", text)
    text = _LINE_BREAKS.sub(" ", text)
    return _CONTROL.sub("", text)


def escape_controls(text: str) -> str:
    """``text`` with backslashes and control characters written as ``\\xNN`` / ``\\uNNNN``."""

    def one(match: re.Match[str]) -> str:
        char = match.group()
        if char == "\\":
            return "\\\\"
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _TO_ESCAPE.sub(one, text)


def _clean_message(value: str) -> str:
    value = terminal_safe(value)
    if len(value) > MAX_MESSAGE_CHARS:
        value = value[: MAX_MESSAGE_CHARS - 1] + "…"
    return value


# No control characters (incl. tab/newline): these are identifiers.
_CODE_PATTERN = f"^[^{_CONTROL_CLASS}]*[^\\s{_CONTROL_CLASS}][^{_CONTROL_CLASS}]*$"
_PATTERN_REASONS = {_CODE_PATTERN: "must be non-blank text without control characters"}


def _integer_as_text(value: Any) -> Any:
    # Some ERPs write their order numbers as JSON numbers; 123456 and
    # "123456" name the same order, and refusing the ack would strand it.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Code = Annotated[
    str,
    BeforeValidator(_integer_as_text),
    StringConstraints(min_length=1, max_length=255, pattern=_CODE_PATTERN),
]
Timestamp = Annotated[AwareDatetime, AfterValidator(_to_utc)]
Message = Annotated[str, AfterValidator(_clean_message)]

_CONFIG = ConfigDict(extra="ignore", frozen=True)


class Ack(BaseModel):
    """Success: the ERP created ``erp_order_id``."""

    model_config = _CONFIG

    status: Literal["ACKED"]
    erp_order_id: Code
    processed_at: Timestamp

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ErrorAck(BaseModel):
    """Failure reported by the ERP."""

    model_config = _CONFIG

    status: Literal["FAILED"]
    error_code: Code
    message: Message
    processed_at: Timestamp
    # The message as the ERP wrote it, escaped; only when cleaning changed it.
    # Private: set by parse_ack, never read from the file.
    _message_raw: str | None = PrivateAttr(default=None)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_error_json(self) -> dict[str, Any]:
        """The shape stored in ``erp_export.error_json``.

        ``code``/``message`` as in ``DropzoneError.to_json``, so operators read
        ERP failures and our own failures the same way.
        """
        data = self.model_dump(mode="json")
        error = {
            "code": data["error_code"],
            "message": data["message"],
            "processed_at": data["processed_at"],
        }
        if self._message_raw is not None:
            error["message_raw"] = self._message_raw
        return error


_EXPECTED_STATUS: dict[str, str] = {"ack": "ACKED", "error": "FAILED"}
_MODELS: dict[str, type[Ack] | type[ErrorAck]] = {"ack": Ack, "error": ErrorAck}


def _display(name: str) -> str:
    # The name comes from a directory listing; only print it verbatim if it
    # is a plain name (it normally is: parse_ack_name filtered it).
    return name if is_safe_filename(name) else f"{name[:80]!r}"


def _malformed(name: str, problem: str) -> MalformedAckError:
    return MalformedAckError(f"malformed ack file {_display(name)}: {problem}")


def _decode(body: bytes, name: str) -> str:
    if len(body) > MAX_ACK_BYTES:
        raise _malformed(name, f"larger than {MAX_ACK_BYTES} bytes")
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if not body.strip():
        raise _malformed(name, "empty")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(name, f"not UTF-8 text (byte offset {exc.start})") from None


def parse_ack(body: bytes, *, kind: AckKind, name: str) -> Ack | ErrorAck:
    """Parse one ack file; ``MalformedAckError`` names the file and what is wrong."""
    if kind not in _EXPECTED_STATUS:
        raise ValueError(f"unknown ack kind: {kind!r}")
    text = _decode(bytes(body), name)
    try:
        # jiter: no recursion blow-up on deeply nested junk, lone surrogates
        # rejected, and its messages say where but never quote the content.
        data = pydantic_core.from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        raise _malformed(name, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _malformed(name, "not a JSON object")
    status = data.get("status")
    expected = _EXPECTED_STATUS[kind]
    if status not in ("ACKED", "FAILED"):
        problem = "missing status" if status is None else 'status is not "ACKED" or "FAILED"'
        raise _malformed(name, problem)
    if status != expected:
        raise _malformed(
            name, f'an {kind}_ file must say status "{expected}", this one says "{status}"'
        )
    try:
        # Strict JSON mode: processed_at must be an RFC 3339 string (lax mode
        # would read a number as Unix time), and true/false/null are not ids.
        # Integer ids are the one tolerated coercion (see _integer_as_text).
        parsed = _MODELS[kind].model_validate_json(text, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{path}: {reason}" for path, reason in validation_problems(exc, _PATTERN_REASONS)
        )
        raise _malformed(name, problems) from None
    raw = data.get("message")
    if isinstance(parsed, ErrorAck) and isinstance(raw, str) and terminal_safe(raw) != raw:
        parsed._message_raw = escape_controls(raw[:MAX_MESSAGE_CHARS])
    return parsed
