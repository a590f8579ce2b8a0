"""`dropzone export`, `retry`, `status`."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import typer

from dropzone.errors import InvalidConfigError, InvalidDraftError
from dropzone.export_v1 import validate_draft
from dropzone.ledger import ExportRecord
from dropzone.settings import load_settings
from starter.cli.common import (
    EXIT_FAILED,
    app,
    fail,
    handle_errors,
    open_ledger,
    out,
    parse_uuid,
    print_json,
    print_table,
    run,
)


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
