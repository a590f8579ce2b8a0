"""The `dropzone` command line: how operators start, watch and steer exports.

Every command turns the project's errors into one line on stderr and a
non-zero exit code; no traceback ever reaches a user, and no secret is printed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from dropzone.connection_config import parse_connection_config, redacted
from dropzone.connectors import DROPZONE_JSON_V1, default_registry
from dropzone.crypto import ConfigCipher
from dropzone.errors import DropzoneError, InvalidConfigError, InvalidDraftError
from dropzone.export_v1 import validate_draft
from dropzone.ledger import ExportRecord, Ledger, migrate
from dropzone.settings import Settings, load_settings

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


@app.command("migrate")
@handle_errors
def migrate_cmd() -> None:
    """Create or upgrade the database schema (Alembic upgrade head)."""
    settings = load_settings()
    migrate(settings.require_database_url())
    out.print(f"database {settings.database_label()} is at the latest schema")


@app.command("keygen")
@handle_errors
def keygen_cmd() -> None:
    """Print a new key for DROPZONE_CONFIG_KEYS."""
    print(ConfigCipher.generate_key())


@app.command("worker")
@handle_errors
def worker_cmd() -> None:
    """Run the Temporal worker until SIGTERM / Ctrl-C."""
    from worker import run_worker

    run(run_worker(load_settings()))


# --- connections --------------------------------------------------------------


def _load_config_input(config_file: Path | None, mode: str | None, export_path: str | None, ack_path: str | None, poll_interval: int | None) -> dict[str, Any]:
    if config_file is not None:
        try:
            text = sys.stdin.read() if str(config_file) == "-" else config_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidConfigError(f"config file {config_file} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(data, dict):
            raise InvalidConfigError(f"config file {config_file} must hold a JSON object")
        return data
    if mode != "filesystem":
        raise InvalidConfigError("give --config-file FILE (SFTP needs credentials), or --mode filesystem --export-path DIR")
    data: dict[str, Any] = {"mode": "filesystem", "export_path": export_path, "ack_path": ack_path}
    if poll_interval is not None:
        data["poll_interval_seconds"] = poll_interval
    return data


@connections_app.command("add")
@handle_errors
def connections_add(
    org: str = typer.Option(..., "--org", help="Organisation UUID."),
    config_file: Path | None = typer.Option(None, "--config-file", help="JSON config (DESIGN 5.6); '-' reads stdin."),
    mode: str | None = typer.Option(None, "--mode", help="'filesystem' for a config from flags."),
    export_path: str | None = typer.Option(None, "--export-path"),
    ack_path: str | None = typer.Option(None, "--ack-path"),
    poll_interval: int | None = typer.Option(None, "--poll-interval", help="Seconds between ack polls."),
    connector_type: str = typer.Option(DROPZONE_JSON_V1, "--type"),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Add a connection; the config is validated, then stored encrypted."""
    org_id = parse_uuid(org, "--org")
    raw = _load_config_input(config_file, mode, export_path, ack_path, poll_interval)
    config = default_registry().get(connector_type).parse_config(raw)
    ledger = open_ledger(load_settings())
    try:
        summary = ledger.add_connection(org_id, connector_type, config_to_store(config))
    finally:
        ledger.dispose()
    if json_output:
        print_json({"id": str(summary.id), "org_id": str(org_id), "connector_type": connector_type, "config": redacted(config)})
    else:
        out.print(f"connection {summary.id} added for org {org_id} ({connector_type})")


def config_to_store(config: Any) -> dict[str, Any]:
    from dropzone.connection_config import config_to_storable

    return config_to_storable(config)


@connections_app.command("list")
@handle_errors
def connections_list(
    org: str | None = typer.Option(None, "--org"),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """List connections (never their secrets)."""
    ledger = open_ledger(load_settings())
    try:
        rows = ledger.list_connections(parse_uuid(org, "--org") if org else None)
    finally:
        ledger.dispose()
    if json_output:
        print_json([
            {"id": str(r.id), "org_id": str(r.org_id), "connector_type": r.connector_type, "active": r.active,
             "last_test_at": r.last_test_at, "last_test_success": r.last_test_success}
            for r in rows
        ])
        return
    lines = []
    for r in rows:
        last = "never" if r.last_test_at is None else f"{'ok' if r.last_test_success else 'FAILED'} {r.last_test_at:%Y-%m-%d %H:%M}"
        lines.append([str(r.id), str(r.org_id), r.connector_type, "yes" if r.active else "no", last])
    print_table(["id", "org", "type", "active", "last test"], lines)


@connections_app.command("test")
@handle_errors
def connections_test(
    connection_id: str = typer.Argument(..., help="Connection UUID."),
    trust: bool = typer.Option(False, "--trust", help="Pin the server's current host key (SFTP)."),
) -> None:
    """Write and delete a probe file in the dropzone; show the SFTP host key."""
    from dropzone.connection_config import SftpConfig
    from dropzone.transports.sftp import fetch_host_key

    cid = parse_uuid(connection_id, "connection")
    ledger = open_ledger(load_settings())
    registry = default_registry()
    try:
        record = ledger.get_connection(cid)
        connector = registry.get(record.connector_type)
        config = connector.parse_config(record.config)
        if isinstance(config, SftpConfig):
            key_type, fingerprint, public_line = fetch_host_key(config.host, config.port, config.connect_timeout_seconds)
            out.print(f"host key of {config.host}:{config.port}: {key_type} {fingerprint}")
            if trust:
                config = config.model_copy(update={"host_key": public_line})
                ledger.update_connection_config(cid, config_to_store(config))
                out.print("host key pinned")
            elif config.host_key is None:
                ledger.record_connection_test(cid, False)
                raise fail("host key not trusted yet: check the fingerprint above, then rerun with --trust")
        try:
            result = connector.test_connection(config)
        except DropzoneError:
            ledger.record_connection_test(cid, False)
            raise
        ledger.record_connection_test(cid, result.ok)
    finally:
        registry.close()
        ledger.dispose()
    if not result.ok:
        raise fail(f"connection {cid}: {result.detail}", EXIT_FAILED)
    out.print(f"connection {cid} ok: {connector.describe(config)} ({result.detail})")


# --- exports ---------------------------------------------------------------------


def _read_draft_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidDraftError(f"cannot read draft file {path}: {exc.strerror}", fields=["(file)"]) from None


def _finished(state: Any) -> bool:
    return state.status in ("ACKED", "FAILED") or (state.status == "SENT" and state.waiting_for == "nothing")


@app.command("export")
@handle_errors
def export_cmd(
    file: Path = typer.Argument(..., help="Approved draft order JSON (DESIGN 5.1)."),
    connection: str = typer.Option(..., "--connection", help="ERP connection UUID."),
    wait: bool = typer.Option(False, "--wait", help="Wait until ACKED/FAILED (or SENT without ack path)."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait with --wait."),
    force: bool = typer.Option(False, "--force", help="Export again although an earlier run has finished."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Start the export of one approved draft (idempotent per draft)."""
    from starter.api import export_status, start_export
    from worker import build_adapters, connect_client

    body = _read_draft_file(file)
    draft = validate_draft(body)
    cid = parse_uuid(connection, "--connection")
    settings = load_settings()
    adapters = build_adapters(settings)
    try:
        record = adapters.ledger.get_connection(cid)
        if record.org_id != draft.org_id:
            raise InvalidConfigError(f"connection {cid} belongs to org {record.org_id}, the draft to org {draft.org_id}")

        async def go() -> Any:
            client = await connect_client(settings)
            started = await start_export(
                client, erp_connection_id=cid, draft=body, store=adapters.store, force=force,
                task_queue=settings.task_queue, inline_limit_bytes=settings.inline_draft_limit_bytes,
            )
            if not json_output:
                verb = "started" if started.started_new else "already exists:"
                out.print(f"export {verb} workflow {started.workflow_id}")
            if not wait:
                return None
            deadline = time.monotonic() + timeout
            while True:
                state = await export_status(client, draft.draft_order_id)
                if _finished(state) or time.monotonic() > deadline:
                    return state
                await asyncio.sleep(0.5)

        state = run(go())
    finally:
        adapters.close()
    if state is None:
        return
    if json_output:
        print_json(state.model_dump(mode="json"))
    else:
        _print_state(state)
    if not _finished(state):
        raise fail(f"still {state.status} after {timeout:.0f} s (waiting for {state.waiting_for})", EXIT_FAILED)
    if state.status == "FAILED":
        raise typer.Exit(EXIT_FAILED)


def _print_state(state: Any) -> None:
    line = f"status: {state.status}  attempt: {state.attempt}  file: {state.filename or '-'}"
    if state.erp_order_id:
        line += f"  erp_order_id: {state.erp_order_id}"
    out.print(line, highlight=False)
    if state.last_error is not None:
        out.print(f"error: {state.last_error.code}: {state.last_error.message}", highlight=False)


@app.command("retry")
@handle_errors
def retry_cmd(
    draft_id: str = typer.Argument(..., help="Draft order UUID."),
    reason: str | None = typer.Option(None, "--reason"),
) -> None:
    """Signal `retry`: a FAILED export starts a new attempt."""
    from starter.api import export_status, retry_export
    from worker import connect_client

    did = parse_uuid(draft_id, "draft id")

    async def go() -> None:
        client = await connect_client(load_settings())
        state = await export_status(client, did)
        if state.status != "FAILED":
            raise fail(f"export of draft {did} is {state.status}, not FAILED: nothing to retry")
        await retry_export(client, did, reason=reason, requested_by=os.environ.get("USER"))

    run(go())
    out.print(f"retry requested for draft {did}")


def _export_row(r: ExportRecord) -> dict[str, Any]:
    return {
        "attempt": r.attempt, "export_id": str(r.id), "filename": r.filename, "status": str(r.status),
        "erp_order_id": r.erp_order_id, "error": r.error_json, "sha256": r.sha256, "size_bytes": r.size_bytes,
        "dropzone_path": r.dropzone_path, "created_at": r.created_at, "sent_at": r.sent_at,
        "acked_at": r.acked_at, "workflow_id": r.workflow_id,
    }


@app.command("status")
@handle_errors
def status_cmd(
    draft_id: str = typer.Argument(..., help="Draft order UUID."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Every attempt of one draft's export, from the ledger."""
    did = parse_uuid(draft_id, "draft id")
    ledger = open_ledger(load_settings())
    try:
        rows = ledger.list_exports(draft_order_id=did, limit=1000)
    finally:
        ledger.dispose()
    if not rows:
        raise fail(f"no export recorded for draft {did}")
    rows = sorted(rows, key=lambda r: r.attempt)
    if json_output:
        print_json({"draft_order_id": str(did), "attempts": [_export_row(r) for r in rows]})
        return
    lines = []
    for r in rows:
        error = f"{r.error_json.get('code')}: {r.error_json.get('message')}" if r.error_json else ""
        lines.append([
            str(r.attempt), r.filename, str(r.status), r.erp_order_id or "", error,
            f"{r.created_at:%Y-%m-%d %H:%M:%S}", f"{r.sent_at:%Y-%m-%d %H:%M:%S}" if r.sent_at else "",
            f"{r.acked_at:%Y-%m-%d %H:%M:%S}" if r.acked_at else "",
        ])
    print_table(["attempt", "file", "status", "erp_order_id", "error", "created", "sent", "acked"], lines, title=f"draft {did}")


DEFAULT_DATA_DIR = Path(".dropzone")


@app.command("dev")
@handle_errors
def dev_cmd(
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="Where every server keeps its data."),
    erp_simulator: bool = typer.Option(True, "--erp-sim/--no-erp-sim", help="Answer exports with ack files."),
    temporal_port: int = typer.Option(7233, "--temporal-port"),
    ui_port: int = typer.Option(8233, "--ui-port"),
    s3_port: int = typer.Option(8333, "--s3-port"),
) -> None:
    """Run the embedded stack and a worker in the foreground (Ctrl-C stops everything)."""
    from starter.demo import run_dev
    from starter.devstack import DevStack, StackPorts

    out.print(f"starting the embedded stack in {data_dir} ...")
    with DevStack(data_dir, StackPorts(temporal=temporal_port, temporal_ui=ui_port, s3=s3_port)) as stack:
        try:
            run(run_dev(stack, out, erp_simulator=erp_simulator))
        except KeyboardInterrupt:
            out.print("stopping ...")


@app.command("demo")
@handle_errors
def demo_cmd(
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    count: int = typer.Option(5, "--count", min=1, max=200, help="How many sample orders to export."),
    exit_when_done: bool = typer.Option(False, "--exit", help="Stop the stack once the batch is done."),
    temporal_port: int = typer.Option(7233, "--temporal-port"),
    ui_port: int = typer.Option(8233, "--ui-port"),
    s3_port: int = typer.Option(8333, "--s3-port"),
) -> None:
    """Bring up the embedded stack, export a batch of sample orders through the ERP simulator, show the results."""
    from starter.demo import run_demo
    from starter.devstack import DevStack, StackPorts

    out.print(f"starting the embedded stack in {data_dir} ...")
    with DevStack(data_dir, StackPorts(temporal=temporal_port, temporal_ui=ui_port, s3=s3_port)) as stack:
        try:
            code = run(run_demo(stack, count=count, exit_when_done=exit_when_done, console=out))
        except KeyboardInterrupt:
            code = 0
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
