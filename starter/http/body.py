"""Request bodies: a size limit for every route, and the push envelope read without decoding the draft.

``BodyLimit`` (ASGI middleware) refuses a body over its route's limit, by its
``Content-Length`` before reading anything, or as soon as a streamed
(chunked) body passes it. The push route spools its body to a
``SpooledTemporaryFile`` (in memory up to ``SPOOL_IN_MEMORY``, on disk beyond),
then msgspec splits the envelope ``{erp_connection_id, draft, force}`` into
raw JSON spans in C: the draft's exact bytes go on to the draft validator and
``start_export``, so the CLI and the API validate the very same bytes alike.
"""

from __future__ import annotations

import json
import mmap
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import msgspec
import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dropzone.export_v1 import field_path
from starter.http.problems import ProblemError, malformed_json, problem_response

SPOOL_IN_MEMORY = 8 * 1024 * 1024
# A body that msgspec refuses is re-read by pydantic's parser (which also takes
# NaN, like the draft validator) only when it is small enough to decode whole.
REPARSE_LIMIT = 16 * 1024 * 1024
COPY_CHUNK = 1024 * 1024

_ENVELOPE = msgspec.json.Decoder(dict[str, msgspec.Raw])


class BodyTooLarge(ProblemError):
    """413; raised by ``BodyLimit`` while a route reads the body, answered like any problem."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body-too-large", "The request body is too large",
            f"the request body is larger than this route's limit of {limit} bytes",
        )


class BodyLimit:
    """ASGI middleware: ``limit_for(path)`` bytes at most per request body.

    Not FastAPI's ``max_body_size``: that one answers a body whose declared
    ``Content-Length`` is too large with a ``text/plain`` 413 that no exception
    handler sees, and every answer here must be a problem document.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await problem_response(Request(scope), BodyTooLarge(limit))(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (``application/json`` or ``application/*+json``)."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    shown = media or "none"
    raise ProblemError(
        415, "unsupported-media-type", "Unsupported media type",
        f"the body must be JSON (Content-Type: application/json), not {shown}",
    )


class _EnvelopeFields(BaseModel):
    """The push envelope besides the draft (the draft is validated by the draft validator)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    erp_connection_id: str
    force: bool = False


@dataclass(frozen=True)
class PushBody:
    """A parsed push: the draft's exact bytes, in memory or (large drafts) in a temporary file."""

    erp_connection_id: str
    force: bool
    draft: bytes | None
    draft_file: IO[bytes] | None
    draft_size: int


@asynccontextmanager
async def push_body(request: Request) -> AsyncIterator[PushBody]:
    """Spool the body, split the envelope, keep the draft's bytes; temporary files go on exit."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="dropzone-push-") as spool:
        size = 0
        async for chunk in request.stream():
            spool.write(chunk)
            size += len(chunk)
        spool.seek(0)
        if size <= SPOOL_IN_MEMORY:  # it rolls over to disk only past max_size
            data = spool.read()
            fields, raw = parse_envelope(data)
            draft = bytes(raw)
            del raw
            yield PushBody(fields.erp_connection_id, fields.force, draft, None, len(draft))
            return
        with tempfile.TemporaryFile(prefix="dropzone-draft-") as draft_file:
            with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                fields, raw = parse_envelope(mapped)
                view = memoryview(raw)
                draft_size = len(view)
                for start in range(0, draft_size, COPY_CHUNK):
                    draft_file.write(view[start : start + COPY_CHUNK])
                view.release()
                del raw  # the map closes only once nothing points into it
            draft_file.seek(0)
            yield PushBody(fields.erp_connection_id, fields.force, None, draft_file, draft_size)


def parse_envelope(data: bytes | mmap.mmap) -> tuple[_EnvelopeFields, Any]:
    """(envelope fields, the draft as a raw JSON span); 400 for a body that is not JSON,
    422 naming each bad envelope field."""
    draft: Any = None
    try:
        parts: dict[str, Any] = _ENVELOPE.decode(data)
        fields = {k: msgspec.json.decode(v) for k, v in parts.items() if k != "draft"}
        draft = parts.get("draft")
        del parts
    except msgspec.ValidationError:
        raise _not_an_object() from None
    except msgspec.DecodeError as exc:
        fields, draft = _reparse(data, exc)
    problems: list[tuple[str, str]] = []
    checked: _EnvelopeFields | None = None
    try:
        checked = _EnvelopeFields.model_validate(fields)
    except ValidationError as exc:
        problems = [(field_path(tuple(e["loc"])), str(e["msg"])) for e in exc.errors(include_url=False)]
    if draft is None:
        problems.append(("draft", "Field required"))
    if problems or checked is None:
        draft = None  # the traceback must not keep the body's memory map open
        detail = "; ".join(f"{f}: {m}" for f, m in problems)
        raise ProblemError(422, "invalid-request", "The request is not valid", detail, field_errors=problems)
    return checked, draft


def _not_an_object() -> ProblemError:
    return ProblemError(
        422, "invalid-request", "The request is not valid", "(body): must be a JSON object",
        field_errors=[("(body)", "must be a JSON object")],
    )


def _reparse(data: bytes | mmap.mmap, exc: msgspec.DecodeError) -> tuple[Any, bytes | None]:
    """msgspec refused the body: pydantic's parser decides (NaN is JSON to it, as to the
    draft validator), or says where the JSON breaks."""
    if len(data) > REPARSE_LIMIT:
        raise malformed_json(str(exc).removeprefix("JSON is malformed: ")) from None
    try:
        decoded = pydantic_core.from_json(bytes(data), allow_inf_nan=True)
    except ValueError as parse_error:
        raise malformed_json(str(parse_error)) from None
    if not isinstance(decoded, dict):
        raise _not_an_object()
    has_draft = "draft" in decoded
    draft = decoded.pop("draft", None)
    # Decoded and written again: the same JSON value (key order, 10.0 vs 10, NaN kept).
    return decoded, json.dumps(draft).encode() if has_draft else None


M = TypeVar("M", bound=BaseModel)


async def small_json(request: Request, model: type[M]) -> M:
    """A small JSON body (``BodyLimit`` bounds it) validated by ``model``: 400 when it is not
    JSON, 422 naming every bad field. Read here, after authentication, not by FastAPI before it."""
    data = await request.body()
    try:
        return model.model_validate_json(data or b"null")
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise malformed_json(str((errors[0].get("ctx") or {}).get("error", "unparseable"))) from None
        problems = [(field_path(tuple(e["loc"])) if e["loc"] else "(body)", str(e["msg"])) for e in errors]
        detail = "; ".join(f"{f}: {m}" for f, m in problems)
        raise ProblemError(422, "invalid-request", "The request is not valid", detail, field_errors=problems) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself (the schema sits in components)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
