"""`dropzone export`, `retry` (one draft or every FAILED export of an org), `status`, `list`.

Read commands print a rich table on a terminal, tab-separated lines when piped,
and JSON with ``--json``. Workflow links point into the Temporal UI when
``DROPZONE_TEMPORAL_UI_URL`` is set.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import typer

from dropzone.draft_files import file_size
from dropzone.errors import InvalidConfigError
from dropzone.export_v1 import DraftOrder
from dropzone.ledger import ExportRecord, ExportStatus
from dropzone.ledger.webhooks import WebhookEvents
from dropzone.settings import Settings, load_settings
from starter.cli.common import (
    EXIT_FAILED,
    app,
    fail,
    format_time,
    handle_errors,
    open_ledger,
    out,
    parse_since,
    parse_uuid,
    print_json,
    print_plain,
    print_table,
    progress_bar,
    run,
    workflow_url,
    workflows_query_url,
)

def _finished(state: Any) -> bool:
    return state.status in ("ACKED", "FAILED") or (state.status == "SENT" and state.waiting_for == "nothing")


@app.command("export")
@handle_errors
def export_cmd(
    file: Path = typer.Argument(..., help="Approved draft order JSON."),
    connection: str = typer.Option(..., "--connection", help="ERP connection UUID."),
    wait: bool = typer.Option(False, "--wait", help="Wait until ACKED/FAILED (or SENT without ack path)."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait with --wait."),
    force: bool = typer.Option(False, "--force", help="Export again although an earlier run has finished."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Start the export of one approved draft (idempotent per draft)."""
    cid = parse_uuid(connection, "--connection")
    settings = load_settings()
    file_size(file, max_bytes=settings.max_draft_bytes)  # unreadable or too large: said before connecting
    from starter.api import export_status, start_export
    from worker import build_adapters, connect_client

    adapters = build_adapters(settings)
    try:

        def check_connection(draft: DraftOrder) -> None:
            # After validation, before anything is stored: a bad draft is named first.
            record = adapters.ledger.get_connection(cid)
            if record.org_id != draft.org_id:
                raise InvalidConfigError(
                    f"connection {cid} belongs to org {record.org_id}, the draft to org {draft.org_id}"
                )

        async def go() -> Any:
            client = await connect_client(settings)
            # The path, not its bytes: a large draft is validated by streaming from the file
            # and uploaded from it, never parsed whole here (starter/draft_intake.py).
            started = await start_export(
                client, erp_connection_id=cid, draft=file, store=adapters.store, force=force,
                task_queue=settings.task_queue, inline_limit_bytes=settings.inline_draft_limit_bytes,
                max_draft_bytes=settings.max_draft_bytes, check_draft=check_connection,
            )
            if not json_output:
                verb = "started" if started.started_new else "already exists:"
                out.print(f"export {verb} workflow {started.workflow_id}")
            if not wait:
                return None
            deadline = time.monotonic() + timeout
            while True:
                state = await export_status(client, started.draft_order_id)
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
    # Ids and messages may come from the ERP: printed as plain text (markup off,
    # so "[/]" is text), and without anything a terminal would act on.
    line = f"status: {state.status}  attempt: {state.attempt}  file: {state.filename or '-'}"
    if state.erp_order_id:
        line += f"  erp_order_id: {state.erp_order_id}"
    print_plain(line)
    if state.last_error is not None:
        print_plain(f"error: {state.last_error.code}: {state.last_error.message}")


@app.command("retry")
@handle_errors
def retry_cmd(
    draft_id: str | None = typer.Argument(None, help="Draft order UUID (or use --all-failed --org)."),
    all_failed: bool = typer.Option(False, "--all-failed", help="Retry every FAILED export of --org."),
    org: str | None = typer.Option(None, "--org", help="Organisation UUID (with --all-failed)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be retried; signal nothing."),
    reason: str | None = typer.Option(None, "--reason"),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Signal `retry`: a FAILED export starts a new attempt (new ledger row, new file)."""
    if all_failed:
        if draft_id is not None:
            raise fail("give either a draft id or --all-failed --org ORG, not both")
        if org is None:
            raise fail("--all-failed needs --org ORG (one organisation at a time)")
        _retry_all_failed(parse_uuid(org, "--org"), dry_run=dry_run, reason=reason, json_output=json_output)
        return
    if org is not None:
        raise fail("--org goes with --all-failed")
    if draft_id is None:
        raise fail("give a draft id, or --all-failed --org ORG")
    _retry_one(parse_uuid(draft_id, "draft id"), dry_run=dry_run, reason=reason, json_output=json_output)


def _retry_one(did: UUID, *, dry_run: bool, reason: str | None, json_output: bool) -> None:
    from starter.api import RetryRejected, export_status, retry_export
    from worker import connect_client

    async def go() -> int | None:
        client = await connect_client(load_settings())
        if dry_run:  # a look only: the real retry below asks the workflow itself
            state = await export_status(client, did)
            if state.status != "FAILED":
                raise fail(f"export of draft {did} is {state.status}, not FAILED: nothing to retry", EXIT_FAILED)
            return None
        try:
            return await retry_export(client, did, reason=reason, requested_by=os.environ.get("USER"))
        except RetryRejected as exc:  # the workflow's own answer: no race with a status query
            if json_output:
                print_json({"draft_order_id": str(did), "verdict": "rejected", "reason": exc.reason})
            raise fail(f"export of draft {did} not retried: {exc.reason}", EXIT_FAILED) from None

    attempt = run(go())
    verdict = "would_retry" if dry_run else "retried"
    if json_output:
        print_json({"draft_order_id": str(did), "verdict": verdict, **({"attempt": attempt} if attempt else {})})
    elif dry_run:
        out.print(f"would retry draft {did}", highlight=False)
    else:
        out.print(f"retried draft {did}: attempt {attempt} started", highlight=False)


def _retry_all_failed(org_id: UUID, *, dry_run: bool, reason: str | None, json_output: bool) -> None:
    from starter.api import RetryOutcome, failed_running_drafts, retry_exports
    from worker import connect_client

    settings = load_settings()
    ledger = open_ledger(settings)

    async def go() -> list[RetryOutcome]:
        client = await connect_client(settings)
        drafts = ledger.failed_draft_ids(org_id)
        # Runs that failed before opening an attempt have no row; Temporal knows them.
        drafts += ledger.drafts_without_attempt(await failed_running_drafts(client, org_id))
        if not drafts:
            return []
        with progress_bar(len(drafts), "checking" if dry_run else "retrying", enabled=not json_output) as advance:
            return await retry_exports(
                client, drafts, reason=reason, requested_by=os.environ.get("USER"), dry_run=dry_run,
                on_outcome=lambda _: advance(),
            )

    try:
        outcomes = run(go())
    finally:
        ledger.dispose()
    if json_output:
        print_json(_bulk_report(org_id, dry_run, outcomes))
    else:
        _print_bulk_report(settings, org_id, dry_run, outcomes)
    if any(o.verdict == "error" for o in outcomes):
        raise typer.Exit(EXIT_FAILED)


def _bulk_report(org_id: UUID, dry_run: bool, outcomes: list[Any]) -> dict[str, Any]:
    def rows(verdict: str) -> list[dict[str, Any]]:
        return [
            {"draft_order_id": str(o.draft_order_id), "workflow_id": o.workflow_id,
             **({"reason": o.detail} if o.detail else {}), **({"attempt": o.attempt} if o.attempt else {})}
            for o in outcomes if o.verdict == verdict
        ]

    return {
        "org_id": str(org_id), "dry_run": dry_run, "failed_exports": len(outcomes),
        "retried": rows("retried"), "would_retry": rows("would_retry"),
        "skipped": rows("skipped"), "errors": rows("error"),
    }


def _print_bulk_report(settings: Settings, org_id: UUID, dry_run: bool, outcomes: list[Any]) -> None:
    if not outcomes:
        out.print(f"no FAILED exports for org {org_id}: nothing to retry", highlight=False)
        return
    lines = [[str(o.draft_order_id), o.verdict, o.detail, workflow_url(settings, o.workflow_id) or o.workflow_id] for o in outcomes]
    print_table(["draft", "result", "detail", "workflow"], lines, title=f"FAILED exports of org {org_id}", markup=False)
    counts = {v: sum(1 for o in outcomes if o.verdict == v) for v in ("retried", "would_retry", "skipped", "error")}
    done = f"would retry {counts['would_retry']}" if dry_run else f"retried {counts['retried']}"
    summary = f"{done} of {len(outcomes)} FAILED exports; skipped {counts['skipped']}; errors {counts['error']}"
    out.print(summary, highlight=False)
    if counts["skipped"]:
        out.print(
            "skipped exports have no running workflow to signal: export them again with "
            "'dropzone export FILE --connection ID --force'",
            highlight=False,
        )


def _export_row(r: ExportRecord, settings: Settings) -> dict[str, Any]:
    return {
        "attempt": r.attempt, "export_id": str(r.id), "draft_order_id": str(r.draft_order_id),
        "org_id": str(r.org_id), "erp_connection_id": str(r.erp_connection_id), "filename": r.filename,
        "status": str(r.status), "erp_order_id": r.erp_order_id, "error": r.error_json, "sha256": r.sha256,
        "size_bytes": r.size_bytes, "dropzone_path": r.dropzone_path, "export_storage_key": r.export_storage_key,
        "created_at": r.created_at, "sent_at": r.sent_at, "acked_at": r.acked_at, "updated_at": r.updated_at,
        "workflow_id": r.workflow_id, "workflow_run_id": r.workflow_run_id,
        "workflow_url": workflow_url(settings, r.workflow_id, r.workflow_run_id),
    }


def _error_text(r: ExportRecord) -> str:
    if not r.error_json:
        return ""
    return f"{r.error_json.get('code', '?')}: {r.error_json.get('message', '')}"


@app.command("status")
@handle_errors
def status_cmd(
    draft_id: str = typer.Argument(..., help="Draft order UUID."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Every attempt of one draft's export, from the ledger, with a link to its workflow."""
    did = parse_uuid(draft_id, "draft id")
    settings = load_settings()
    ledger = open_ledger(settings)
    try:
        rows = ledger.draft_attempts(did)
        callbacks = WebhookEvents(ledger).for_draft(did)
    finally:
        ledger.dispose()
    if not rows:
        raise fail(f"no export recorded for draft {did}")
    if json_output:
        print_json({
            "draft_order_id": str(did), "org_id": str(rows[0].org_id), "attempts": [_export_row(r, settings) for r in rows],
            "webhook_events": [e.model_dump(mode="json") for e in callbacks],
        })
        return
    lines = [
        [
            str(r.attempt), r.filename, str(r.status), r.erp_order_id or "", _error_text(r),
            format_time(r.created_at), format_time(r.sent_at), format_time(r.acked_at), r.dropzone_path or "",
            workflow_url(settings, r.workflow_id, r.workflow_run_id) or r.workflow_id or "",
        ]
        for r in rows
    ]
    print_table(
        # The first eight columns keep their places: scripts read them by position.
        ["attempt", "file", "status", "erp_order_id", "error", "created", "sent", "acked", "dropzone_path", "workflow"],
        lines,
        title=f"draft {did} (org {rows[0].org_id}; times UTC)",
        markup=False,
    )
    if callbacks:  # only for connections with a webhook: other output stays as it was
        out.print("")
        print_table(
            ["attempt", "event", "delivery", "tries", "http", "last_error", "occurred", "delivered", "event_id"],
            [[str(e.attempt), e.event_type, str(e.status), str(e.delivery_attempts), str(e.response_status or ""),
              e.last_error or "", format_time(e.occurred_at), format_time(e.delivered_at), str(e.event_id)]
             for e in callbacks],
            title="status callbacks (webhook)",
            markup=False,
        )


@app.command("list")
@handle_errors
def list_cmd(
    org: str | None = typer.Option(None, "--org", help="Only this organisation (UUID)."),
    status: str | None = typer.Option(None, "--status", help="PENDING, SENT, ACKED or FAILED."),
    since: str | None = typer.Option(None, "--since", help="Created since: 30m, 2h, 7d, or an ISO date/time (UTC)."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="Rows per page."),
    page: int = typer.Option(1, "--page", min=1, help="Page number (1 = newest)."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Export attempts from the ledger, newest first, a page at a time."""
    org_id = parse_uuid(org, "--org") if org is not None else None
    status_filter = _parse_status(status) if status is not None else None
    since_at = parse_since(since) if since is not None else None
    settings = load_settings()
    ledger = open_ledger(settings)
    try:
        # One row more than asked tells whether another page exists.
        rows = ledger.list_exports(
            org_id=org_id, status=status_filter, since=since_at, limit=limit + 1, offset=(page - 1) * limit
        )
    finally:
        ledger.dispose()
    has_more = len(rows) > limit
    rows = rows[:limit]
    if json_output:
        print_json({
            "page": page, "limit": limit, "has_more": has_more,
            "filters": {
                "org_id": str(org_id) if org_id else None, "status": status_filter,
                "since": since_at.isoformat() if since_at else None,
            },
            "exports": [_export_row(r, settings) for r in rows],
        })
        return
    lines = [
        [
            format_time(r.created_at), str(r.org_id), str(r.draft_order_id), str(r.attempt), str(r.status),
            r.filename, r.erp_order_id or "", _error_text(r),
        ]
        for r in rows
    ]
    print_table(
        ["created", "org", "draft", "attempt", "status", "file", "erp_order_id", "error"],
        lines,
        title="exports (newest first; times UTC)",
        caption=_list_caption(settings, page, limit, len(rows), has_more, org_id, status_filter),
        markup=False,
    )


def _parse_status(value: str) -> str:
    try:
        return ExportStatus(value.strip().upper()).value
    except ValueError:
        names = ", ".join(s.value for s in ExportStatus)
        raise InvalidConfigError(f"--status {value!r}: expected one of {names}") from None


def _list_caption(
    settings: Settings, page: int, limit: int, shown: int, has_more: bool, org_id: UUID | None, status: str | None
) -> str:
    first = (page - 1) * limit + 1
    text = f"page {page}: rows {first}-{first + shown - 1}" if shown else f"page {page}: no rows"
    if has_more:
        text += f"; next page: --page {page + 1}"
    clauses = ([f'OrgId="{org_id}"'] if org_id else []) + ([f'ExportStatus="{status}"'] if status else [])
    ui = workflows_query_url(settings, " AND ".join(clauses)) if clauses else None
    if ui:
        text += f"\nTemporal UI: {ui}"
    return text
