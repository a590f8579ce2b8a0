"""How the project's errors become Temporal failures, in one place.

An activity raises ``dropzone.errors`` exceptions; this decorator turns them
into ``ApplicationError`` with ``type`` = the error code and ``non_retryable``
taken from the error class, so the workflow's retry policies never need a list
of error names. Anything else is a bug: it is logged without its arguments and
left retryable, so a fixed worker can finish the attempt.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from dropzone.errors import AckNotYetAvailable, DropzoneError, InvalidDraftError

P = ParamSpec("P")
R = TypeVar("R")


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


def translate_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DropzoneError as exc:
            # `from None`: the library exception's text may hold hosts, paths or
            # worse; the project error's message is the operator-facing one.
            raise to_application_error(exc) from None

    return wrapper
