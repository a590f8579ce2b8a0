"""How the project's errors become Temporal failures, in one place.

An activity raises ``dropzone.errors`` exceptions; this decorator turns them
into ``ApplicationError`` with ``type`` = the error code and ``non_retryable``
taken from the error class, so the workflow's retry policies never need a list
of error names.

Anything else is a bug or a library's fault we did not foresee (a
``DBAPIError`` whose text quotes SQL and the values PostgreSQL refused, a
``KeyError`` naming a customer field). Its text and traceback never reach
Temporal, where the history keeps them for as long as the run: the failure is
``INTERNAL_ERROR`` naming only the exception's type, raised ``from None`` so
that no cause is attached. It stays retryable (with the activity's backoff), as
before: a fixed worker, or a fault that passes, lets the same attempt finish.
The worker's log gets what a developer needs to find the bug — the types along
the exception chain, the frames (file, line, function; no source text, no
values) and, for database errors, the SQLSTATE — never a message.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from dropzone.errors import AckNotYetAvailable, DropzoneError, InvalidDraftError, UnexpectedError

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)

# Enough frames to find the bug; a recursion error would otherwise log thousands.
MAX_LOGGED_FRAMES = 40
MAX_CHAIN = 5


def to_application_error(exc: DropzoneError) -> ApplicationError:
    fields = exc.fields if isinstance(exc, InvalidDraftError) else []
    return ApplicationError(
        exc.message,
        {"fields": fields},
        type=exc.code,
        non_retryable=not exc.retryable,
        # "No ack yet" is the poll loop working, not a fault: logged at DEBUG, no failure metric.
        category=(
            ApplicationErrorCategory.BENIGN
            if isinstance(exc, AckNotYetAvailable)
            else ApplicationErrorCategory.UNSPECIFIED
        ),
    )


def unexpected_error(exc: BaseException) -> UnexpectedError:
    """The stand-in for an exception that is not ours: its type, nothing of its text."""
    return UnexpectedError(f"internal error ({type(exc).__name__}); details are in the worker log")


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < MAX_CHAIN and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _frames(exc: BaseException) -> list[str]:
    frames = traceback.extract_tb(exc.__traceback__)[-MAX_LOGGED_FRAMES:]
    return [f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in frames]


def redacted_details(exc: BaseException) -> dict[str, Any]:
    """What the worker log says about an unexpected exception: no message, no values."""
    chain = _chain(exc)
    details: dict[str, Any] = {
        "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "error_chain": [f"{type(e).__module__}.{type(e).__qualname__}" for e in chain],
        "error_frames": _frames(exc),
    }
    for link in chain:
        # psycopg errors (and SQLAlchemy's wrapper's .orig) carry the SQLSTATE: a code, no data.
        sqlstate = getattr(getattr(link, "orig", link), "sqlstate", None)
        if isinstance(sqlstate, str):
            details["sqlstate"] = sqlstate
            break
    return details


def translate_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DropzoneError as exc:
            # `from None`: the library exception's text may hold hosts, paths or
            # worse; the project error's message is the operator-facing one.
            raise to_application_error(exc) from None
        except (ApplicationError, CancelledError):
            raise  # already Temporal's: a cancellation, or an error made on purpose
        except Exception as exc:
            log.error(
                "activity raised an unexpected exception; reported as INTERNAL_ERROR",
                extra=redacted_details(exc),
            )
            raise to_application_error(unexpected_error(exc)) from None

    return wrapper
