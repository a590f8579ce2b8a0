"""Shared pieces of the `dropzone` CLI: the app, error handling, output helpers.

Every command turns the project's errors into one line on stderr and a
non-zero exit code; no traceback ever reaches a user, and no secret is printed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from dropzone.errors import DropzoneError, InvalidConfigError
from dropzone.ledger import Ledger
from dropzone.settings import Settings

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
            names = ", ".join(".".join(str(p) for p in e["loc"]) or "(value)" for e in exc.errors())
            raise fail(f"invalid settings: {names}") from None
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


def print_table(columns: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A rich table on a terminal; tab-separated lines with a header when piped."""
    if out.is_terminal:
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    sys.stdout.write("\t".join(columns) + "\n")
    for row in rows:
        sys.stdout.write("\t".join(row) + "\n")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- setup ------------------------------------------------------------------
