"""`dropzone acks …`: ack files that were rejected (malformed, unknown export, contradictory),
and the ack listeners that look for them (one per connection, workflows/ack_listener.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import typer
from rich.markup import escape

from dropzone.errors import InvalidConfigError
from dropzone.settings import load_settings
from starter.cli.common import (
    app,
    err,
    format_time,
    handle_errors,
    open_ledger,
    out,
    parse_since,
    parse_uuid,
    print_json,
    print_table,
    run,
)

acks_app = typer.Typer(help="Ack files written by the ERP.", no_args_is_help=True)
LISTENER_QUERY_TIMEOUT = timedelta(seconds=5)
app.add_typer(acks_app, name="acks")


@acks_app.command("rejected")
@handle_errors
def acks_rejected(
    connection: str | None = typer.Option(None, "--connection", help="Only this ERP connection (UUID)."),
    org: str | None = typer.Option(None, "--org", help="Only this organisation (UUID)."),
    since: str | None = typer.Option(None, "--since", help="Only newer ones: 24h, 7d or an ISO timestamp."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Ack files moved to <ack_path>/error/ instead of being accepted, newest first."""
    connection_id = parse_uuid(connection, "--connection") if connection else None
    org_id = parse_uuid(org, "--org") if org else None
    since_at = parse_since(since) if since is not None else None
    ledger = open_ledger(load_settings())
    try:
        rows = ledger.list_ack_rejections(org_id=org_id, connection_id=connection_id, since=since_at, limit=limit)
    finally:
        ledger.dispose()
    if json_output:
        print_json([row.model_dump(mode="json") for row in rows])
        return
    if not rows:
        out.print("no rejected ack files", highlight=False)
        return
    print_table(
        ["when (UTC)", "connection", "export", "ack file", "reason", "moved to"],
        [
            [
                f"{row.created_at:%Y-%m-%d %H:%M:%S}",
                str(row.erp_connection_id),
                str(row.export_id) if row.export_id else "-",
                # Reasons quote parser output; never let rich read them as markup.
                escape(row.ack_file) if out.is_terminal else row.ack_file,
                escape(row.reason) if out.is_terminal else row.reason,
                escape(row.moved_to) if out.is_terminal else row.moved_to,
            ]
            for row in rows
        ],
    )


@acks_app.command("listeners")
@handle_errors
def acks_listeners(
    connection: str | None = typer.Option(None, "--connection", help="Only this ERP connection (UUID)."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """The running ack listeners: last listing, files seen, handed over, rejected, stale .tmp removed, last error."""
    from dropzone.contracts import ListenerState
    from workflows import policies
    from worker import connect_client

    connection_id = parse_uuid(connection, "--connection") if connection else None

    async def go() -> list[ListenerState]:
        client = await connect_client(load_settings())
        if connection_id is not None:
            ids = [policies.listener_id_for(connection_id)]
        else:
            query = f"WorkflowType = '{policies.LISTENER_WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
            ids = sorted({execution.id async for execution in client.list_workflows(query)})
        async def ask(workflow_id: str) -> ListenerState | None:
            # A query waits for a worker of the listener's task queue: bounded, and all
            # asked at once, so that one listener whose workers are gone costs seconds, not the command.
            try:
                return await client.get_workflow_handle(workflow_id).query(
                    "state", result_type=ListenerState, rpc_timeout=LISTENER_QUERY_TIMEOUT
                )
            except Exception as exc:  # not running (yet), or its worker is away
                if connection_id is not None:
                    raise InvalidConfigError(f"no ack listener answers for connection {connection_id}: {type(exc).__name__}") from None
                return None

        answers = await asyncio.gather(*(ask(workflow_id) for workflow_id in ids))
        silent = sum(1 for answer in answers if answer is None)
        if silent:
            err.print(f"{silent} running ack listener(s) did not answer (no worker on their task queue?)", highlight=False)
        return [answer for answer in answers if answer is not None]

    states = run(go())
    if json_output:
        print_json([state.model_dump(mode="json") for state in states])
        return
    if not states:
        out.print("no ack listener is running", highlight=False)
        return
    print_table(
        ["connection", "every", "last listing (UTC)", "files", "seen", "handed over", "closed runs", "rejected",
         "stale .tmp removed", "last error"],
        [
            [
                str(s.erp_connection_id),
                f"{s.poll_interval_seconds} s",
                format_time(s.last_listing_at) or "never",
                str(s.last_listing_files),
                str(s.files_seen),
                str(s.handed_over),
                str(s.recorded_without_run),
                str(s.rejected),
                str(s.stale_tmp_removed),
                f"{s.last_error.code}: {s.last_error.message} ({format_time(s.last_error_at)})" if s.last_error else "",
            ]
            for s in states
        ],
        markup=False,  # error messages quote the dropzone
    )
