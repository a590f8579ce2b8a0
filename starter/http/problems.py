"""Every error answer of the HTTP API: RFC 9457 ``application/problem+json``.

One table (``_DROPZONE_ERRORS``) maps the project's errors to HTTP, the way each
adapter of the project has one error table. Details are the project's own
messages, which name fields, ids and hosts but never a credential or an input
value; anything unexpected becomes a 500 that says only "internal error" and an
id to find the server's log line. No traceback ever leaves the process.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dropzone import errors
from dropzone.export_v1 import DOCUMENT, field_path

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:orderflow-dropzone:problem:"

log = logging.getLogger("dropzone.api")


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. `draft.lines[2].qty`.")
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, plus `code` (the project's error code) and `errors` (one per bad field)."""

    type: str = Field(description=f"`{TYPE_PREFIX}<slug>`")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str | None = None
    errors: list[FieldProblem] | None = None


class ProblemError(Exception):
    """Raised by routes and dependencies; rendered by ``problem_response``."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        *,
        code: str | None = None,
        field_errors: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.code = code
        self.field_errors = list(field_errors)
        self.headers = headers


def problem_response(request: Request | None, problem: ProblemError) -> JSONResponse:
    body = Problem(
        type=TYPE_PREFIX + problem.slug,
        title=problem.title,
        status=problem.status,
        detail=problem.detail,
        instance=request.url.path if request is not None else None,
        code=problem.code,
        errors=[FieldProblem(field=f, message=m) for f, m in problem.field_errors] or None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


# --- the project's errors ---------------------------------------------------------

# (status, slug, title) per error class; the first match in MRO order wins.
_DROPZONE_ERRORS: dict[type[errors.DropzoneError], tuple[int, str, str]] = {
    errors.InvalidDraftError: (422, "invalid-draft", "The draft is not valid"),
    errors.ConnectionNotFoundError: (404, "not-found", "Not found"),
    errors.ExportNotFoundError: (404, "not-found", "Not found"),
    # Raised below the routes only for the server's own settings (request fields get
    # their own 422s in the routes): the operator must act, the message names the setting.
    errors.InvalidConfigError: (500, "misconfigured", "The API is misconfigured"),
    errors.AuthenticationError: (500, "misconfigured", "The API is misconfigured"),  # its S3 keys
    errors.TransientError: (503, "unavailable", "A service the API needs is unavailable"),
    errors.PermanentError: (500, "internal", "Internal error"),
}


def from_dropzone_error(exc: errors.DropzoneError, *, within: str = "") -> ProblemError:
    for cls in type(exc).__mro__:
        if cls in _DROPZONE_ERRORS:
            status, slug, title = _DROPZONE_ERRORS[cls]  # type: ignore[index]
            break
    else:
        status, slug, title = 500, "internal", "Internal error"
    if slug == "internal":
        return _internal(exc)
    field_errors: list[tuple[str, str]] = []
    if isinstance(exc, errors.InvalidDraftError):
        field_errors = [(_prefixed(within, f), m) for f, m in draft_problems(exc)]
    headers = {"Retry-After": "5"} if status == 503 else None
    return ProblemError(status, slug, title, exc.message, code=exc.code, field_errors=field_errors, headers=headers)


def draft_problems(exc: errors.InvalidDraftError) -> list[tuple[str, str]]:
    """(field, reason) per field named by the draft validator, read back from its message.

    The message is ``invalid draft: path: reason; path: reason`` (dropzone/export_v1/problems.py),
    the very line the CLI prints, so both doors word every problem alike.
    """
    text = exc.message.removeprefix("invalid draft: ")
    reasons: dict[str, list[str]] = {}
    for field in sorted(exc.fields, key=len, reverse=True):
        reasons.setdefault(field, [])
    for part in text.split("; "):
        for field in reasons:
            if part.startswith(f"{field}: "):
                reasons[field].append(part[len(field) + 2 :])
                break
    return [(field, "; ".join(reasons.get(field) or ["is invalid"])) for field in exc.fields]


def _prefixed(within: str, field: str) -> str:
    if not within:
        return field
    if field == DOCUMENT:
        return within
    return f"{within}{field}" if field.startswith("[") else f"{within}.{field}"


def _internal(exc: BaseException) -> ProblemError:
    error_id = uuid.uuid4().hex[:12]
    # The type only: a library's message may quote a URL with a password in it.
    log.error("internal error %s (%s)", error_id, type(exc).__name__)
    log.debug("internal error %s", error_id, exc_info=exc)
    return ProblemError(500, "internal", "Internal error", f"internal error (id {error_id}); see the API's log")


# --- handlers ------------------------------------------------------------------------

_HTTP_SLUGS = {401: "unauthorized", 404: "not-found", 405: "method-not-allowed", 413: "body-too-large",
               415: "unsupported-media-type"}


def _validation_field(loc: Sequence[int | str]) -> str:
    parts = tuple(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return field_path(parts) if parts else "(body)"


def validation_problem(exc: RequestValidationError) -> ProblemError:
    errors_ = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors_):
        ctx = next((e.get("ctx") or {}) for e in errors_ if e.get("type") == "json_invalid")
        return malformed_json(str(ctx.get("error", "unparseable")))
    # pydantic's messages never quote the input; the `input` key is dropped.
    field_errors = [(_validation_field(e["loc"]), str(e["msg"])) for e in errors_]
    detail = "; ".join(f"{f}: {m}" for f, m in field_errors)
    return ProblemError(422, "invalid-request", "The request is not valid", detail, field_errors=field_errors)


def malformed_json(reason: str) -> ProblemError:
    return ProblemError(400, "malformed-json", "The body is not valid JSON", f"invalid JSON: {reason}")


def install(app: FastAPI) -> None:
    """Register every handler on ``app`` and the catch-all middleware around it."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(errors.DropzoneError)
    async def _dropzone(request: Request, exc: errors.DropzoneError) -> JSONResponse:
        return problem_response(request, from_dropzone_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(request, validation_problem(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _HTTP_SLUGS.get(exc.status_code, f"http-{exc.status_code}")
        title = str(exc.detail) if exc.detail else "Error"
        problem = ProblemError(exc.status_code, slug, title, headers=dict(exc.headers or {}) or None)
        return problem_response(request, problem)

    app.add_middleware(CatchAll)


class CatchAll:
    """The outermost safety net of our own: an unexpected exception becomes a 500 problem.

    Starlette's ServerErrorMiddleware would answer too, but it re-raises so that
    the server logs the traceback (with whatever the exception message holds).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the one place that catches everything
            problem = from_dropzone_error(exc) if isinstance(exc, errors.DropzoneError) else _internal(exc)
            if started:  # too late for a problem: the client sees a cut-off response
                return
            await problem_response(Request(scope), problem)(scope, receive, send)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries: each status documented as a Problem (``application/problem+json``)."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"description": HTTPStatus(status).phrase, "content": {PROBLEM_JSON: {"schema": schema}}}
        for status in statuses
    }
