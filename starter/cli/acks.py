"""`dropzone acks …`: ack files that were rejected (malformed, unknown export, contradictory)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import typer
from rich.markup import escape

from dropzone.errors import InvalidConfigError
from dropzone.settings import load_settings
from starter.cli.common import (
    app,
    handle_errors,
    open_ledger,
    out,
    parse_uuid,
    print_json,
    print_table,
)

acks_app = typer.Typer(help="Ack files written by the ERP.", no_args_is_help=True)
app.add_typer(acks_app, name="acks")


def _parse_since(value: str | None) -> datetime | None:
    """``24h``, ``7d``, ``30m`` or an ISO 8601 timestamp (UTC when it has no offset)."""
    if value is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    text = value.strip()
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidConfigError(f"--since {value!r}: use e.g. 24h, 7d or 2025-01-31T00:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    ledger = open_ledger(load_settings())
    try:
        rows = ledger.list_ack_rejections(
            org_id=org_id, connection_id=connection_id, since=_parse_since(since), limit=limit
        )
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
