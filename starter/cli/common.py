"""Shared pieces of the `dropzone` CLI: the app, error handling, output helpers.

Every command turns the project's errors into one line on stderr and a
non-zero exit code; no traceback ever reaches a user, and no secret is printed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote
from uuid import UUID

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.style import Style
from rich.table import Table
from rich.text import Text

from dropzone.acks import terminal_safe
from dropzone.errors import DropzoneError, InvalidConfigError
from dropzone.ledger import Ledger
from dropzone.settings import Settings, invalid_settings_message

app = typer.Typer(
    help="Deliver approved orders to ERP dropzones and steer the exports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
connections_app = typer.Typer(help="ERP connections (configs are stored encrypted).", no_args_is_help=True)
app.add_typer(connections_app, name="connections")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")

# Exit codes: 1 = the export itself failed, 2 = bad input or an unreachable service.
EXIT_FAILED = 1
EXIT_ERROR = 2


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """One place where every failure becomes one clear line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except DropzoneError as exc:
            raise fail(exc.message) from None
        except ValidationError as exc:  # settings from the environment
            raise fail(invalid_settings_message(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as exc:  # a bug: say so without leaking arguments
            if os.environ.get("DROPZONE_DEBUG"):
                raise
            raise fail(f"internal error ({type(exc).__name__}); rerun with DROPZONE_DEBUG=1 for details") from None

    return wrapper


def run(coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


def open_ledger(settings: Settings) -> Ledger:
    from worker import build_cipher

    return Ledger.connect(settings.require_database_url(), build_cipher(settings), pool_size=2)


def parse_uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise InvalidConfigError(f"{what} {value!r} is not a UUID") from None


def print_table(
    columns: list[str],
    rows: list[list[str]],
    title: str | None = None,
    *,
    caption: str | None = None,
    markup: bool = True,
) -> None:
    """A rich table on a terminal; tab-separated lines with a header when piped.

    ``markup=False`` shows cells as plain text (an ERP message or a file
    name may contain brackets that rich would read as styles). Every cell loses
    control characters and escape sequences (``terminal_safe``). When piped, the
    caption goes to stderr so that stdout stays one header line plus one line
    per row.
    """
    if out.is_terminal:
        table = Table(title=title, caption=caption)
        for column in columns:
            # Fold, never cut: ids, file names and links are copied from here.
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(cell, markup) for cell in row))
        out.print(table)
        return
    sys.stdout.write("\t".join(columns) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(_one_line(cell) for cell in row) + "\n")
    if caption:
        err.print(caption, highlight=False, soft_wrap=True)


def _cell(cell: Any, markup: bool) -> Any:
    if not isinstance(cell, str):
        return cell
    return terminal_safe(cell) if markup else _plain_cell(cell)


def _plain_cell(cell: str) -> Text:
    cell = terminal_safe(cell)
    # A link stays clickable (OSC 8) in terminals that support it, even when folded.
    if cell.startswith(("http://", "https://")):
        return Text(cell, style=Style(link=cell))
    return Text(cell)


def _one_line(cell: str) -> str:
    # One line per row, and nothing a terminal (or `less -R`) would act on:
    # cells hold ERP-written ids and messages.
    return terminal_safe(cell)


def print_plain(text: str) -> None:
    """One line of text that may hold outside data: no markup, no escape sequences."""
    out.print(terminal_safe(text), markup=False, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yields ``advance()``: a progress bar on a terminal, nothing when piped or disabled."""
    if not (enabled and out.is_terminal):
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def format_time(value: datetime | None) -> str:
    """UTC, to the second; empty for "not yet"."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return f"{value:%Y-%m-%d %H:%M:%S}"


# --- Temporal UI links -----------------------------------------------------------


def workflow_url(settings: Settings, workflow_id: str | None, run_id: str | None = None) -> str | None:
    """The run's page in the Temporal UI, when ``DROPZONE_TEMPORAL_UI_URL`` is set."""
    if not settings.temporal_ui_url or not workflow_id:
        return None
    base = f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{quote(settings.temporal_namespace, safe='')}"
    page = f"{base}/workflows/{quote(workflow_id, safe='')}"
    return f"{page}/{quote(run_id, safe='')}/history" if run_id else page


def workflows_query_url(settings: Settings, query: str) -> str | None:
    """The Temporal UI's workflow list filtered by a visibility query."""
    if not settings.temporal_ui_url:
        return None
    base = f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{quote(settings.temporal_namespace, safe='')}"
    return f"{base}/workflows?query={quote(query, safe='')}"


# --- option parsing ----------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, *, option: str = "--since", now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d``, ``1w`` ago, or an ISO date / date-time (UTC unless it says otherwise)."""
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), _UNITS[match.group(2).lower()]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidConfigError(
            f"{option} {value!r}: expected a duration such as 30m, 2h, 7d or an ISO date/time "
            "such as 2025-12-01 or 2025-12-01T10:00:00Z"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --- setup ------------------------------------------------------------------
