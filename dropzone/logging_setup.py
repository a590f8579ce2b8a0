"""Structured logs: JSON lines when nobody watches, readable lines on a terminal.

One ``ProcessorFormatter`` on the root logger renders both structlog events and
plain stdlib records (temporalio, paramiko, botocore, our ``logging.getLogger``
users), so every line has the same shape and passes the same redaction:

- context bound with ``structlog.contextvars`` (the activity interceptor binds
  workflow id, attempt, draft, export and org) is merged into every line emitted
  in that context, stdlib records included;
- Temporal's own ``temporal_activity`` / ``temporal_workflow`` extras are
  flattened into the same keys;
- any key named like a credential is dropped, and credential-looking
  ``key=value`` / ``'Header': b'…'`` fragments inside messages are masked — a
  safety net: nothing in this project logs a config or an input wholesale.

Chatty libraries that may print authentication details at DEBUG (paramiko,
botocore, urllib3) stay at WARNING unless the level is DEBUG; ``botocore.auth``
(request signatures) never goes below WARNING.

No Temporal imports here (domain package); the worker switches off Temporal's
"info appended to the message" habit itself.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

HANDLER_NAME = "dropzone"
# Libraries whose DEBUG output can carry hosts, headers or auth exchanges.
CHATTY_LIBRARIES = ("paramiko", "botocore", "boto3", "s3transfer", "urllib3", "asyncssh")
# Request signatures and canonical requests (botocore.auth), and every SQL
# statement with its parameters (sqlalchemy.engine): never wanted in these logs.
ALWAYS_QUIET = ("botocore.auth", "botocore.credentials", "sqlalchemy.engine", "sqlalchemy.pool")

# Key names that hold (or may hold) credentials; matched anywhere in the name.
SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)|secret|ssh_key|private_key|authori[sz]ation|credential|access_key|"
    r"api_key|security_token|session_token|config_keys|payload_keys|auth_token|token_hash|"
    r"config_encrypted|^cookie$",
    re.IGNORECASE,
)
# `password=…`, `"Authorization": b'…'`, `secret: …` inside free text.
SECRET_IN_TEXT = re.compile(
    r"""(?P<key>['"]?[\w-]*(?:password|passwd|passphrase|secret|authorization|security-token|"""
    r"""x-amz-security-token|private_key|ssh_key|api_key|payload_keys|auth_token)[\w-]*['"]?\s*[:=]\s*)"""
    r"""(?P<value>b?'[^']*'|b?"[^"]*"|[^\s,;}\]]+)""",
    re.IGNORECASE,
)
REDACTED = "[REDACTED]"

# What Temporal's logger adapters put on records, and the keys we use for it.
_TEMPORAL_EXTRAS = {
    "temporal_activity": {
        "workflow_id": "workflow_id",
        "workflow_run_id": "workflow_run_id",
        "activity_type": "activity_type",
        "attempt": "attempt",
        "task_queue": "task_queue",
    },
    "temporal_workflow": {
        "workflow_id": "workflow_id",
        "run_id": "workflow_run_id",
        "workflow_type": "workflow_type",
        "task_queue": "task_queue",
    },
}


# --- processors ----------------------------------------------------------------


def lift_temporal_extras(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Flatten temporalio's ``temporal_activity``/``temporal_workflow`` dicts into our keys."""
    for extra, keys in _TEMPORAL_EXTRAS.items():
        details = event_dict.pop(extra, None)
        if isinstance(details, dict):
            for source, target in keys.items():
                if source in details:
                    event_dict.setdefault(target, details[source])
    # Core logs forwarded by the Runtime carry an object that is not JSON.
    event_dict.pop("temporal_log", None)
    # Set on the record by any other handler's Formatter that ran first: a copy of "event".
    event_dict.pop("message", None)
    return event_dict


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def put_essentials_first(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """timestamp, level, logger, event lead every JSON line; the context follows."""
    ordered = {key: event_dict[key] for key in _FIRST_KEYS if key in event_dict}
    ordered.update((k, v) for k, v in event_dict.items() if k not in ordered)
    return ordered


def _without_secret_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_secret_keys(v) for k, v in value.items() if not (isinstance(k, str) and SECRET_KEY.search(k))}
    if isinstance(value, list | tuple):
        return type(value)(_without_secret_keys(v) for v in value)
    return value


def drop_secret_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Remove every key named like a credential, at any depth."""
    return _without_secret_keys(dict(event_dict))  # type: ignore[no-any-return]


def mask_secrets_in_text(text: str) -> str:
    return SECRET_IN_TEXT.sub(lambda m: f"{m.group('key')}{REDACTED}", text)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets_in_text(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(v) for v in value)
    return value


def mask_secret_text(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask credential-looking fragments in every text: message, exception, extras."""
    return {key: _masked(value) for key, value in event_dict.items()}


# --- configuration ---------------------------------------------------------------


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (rich progress bars and pytest swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _renderer(fmt: LogFormat, stream: TextIO) -> Processor:
    interactive = fmt == "console" or (fmt == "auto" and _is_terminal(stream))
    if interactive:
        return structlog.dev.ConsoleRenderer(colors=_is_terminal(stream))
    return structlog.processors.JSONRenderer(sort_keys=False, default=str)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(level: str = "INFO", fmt: LogFormat = "auto", *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one redacting formatter on ``stream`` (stderr).

    Safe to call again (the previous handler is replaced), e.g. by a test.
    """
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"unknown log level {level!r}")
    numeric = levels[level.upper()]
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer = _renderer(fmt, stream or sys.stderr)
    final: list[Processor] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        lift_temporal_extras,
        drop_secret_keys,
    ]
    if not isinstance(renderer, structlog.dev.ConsoleRenderer):
        final.append(structlog.processors.format_exc_info)  # the console renderer draws its own
    final += [mask_secret_text, put_essentials_first, renderer]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=final,
    )
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    quiet = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    for name in ALWAYS_QUIET:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def bound_fields(**fields: Any) -> MutableMapping[str, Any]:
    """Only the fields that are set: ``None`` never becomes a ``"None"`` in a log line."""
    return {k: str(v) if not isinstance(v, int | float | bool) else v for k, v in fields.items() if v is not None}
