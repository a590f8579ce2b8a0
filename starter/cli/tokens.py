"""`dropzone tokens create|list|revoke`: API tokens, one organisation each (only their hash is stored)."""

from __future__ import annotations

import typer

from dropzone.ledger.tokens import ApiTokens
from dropzone.settings import load_settings
from starter.cli.common import app, format_time, handle_errors, open_ledger, out, parse_uuid, print_json, print_table

tokens_app = typer.Typer(help="API tokens of the HTTP API (one organisation each).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
@handle_errors
def tokens_create(
    org: str = typer.Option(..., "--org", help="The organisation (UUID) the token acts for."),
    name: str = typer.Option("api", "--name", help="What the token is for (shown by `tokens list`)."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Create a token and print it once (it cannot be shown again: only its sha256 is stored)."""
    org_id = parse_uuid(org, "--org")
    ledger = open_ledger(load_settings())
    try:
        token, record = ApiTokens(ledger.engine).create(org_id, name)
    finally:
        ledger.dispose()
    if json_output:
        print_json({"token": token, "id": str(record.id), "org_id": str(record.org_id), "name": record.name})
        return
    out.print(token, highlight=False, markup=False)
    typer.echo(f"token {record.id} for org {org_id} ({record.name}); store it now, it is not shown again", err=True)


@tokens_app.command("list")
@handle_errors
def tokens_list(
    org: str | None = typer.Option(None, "--org", help="Only this organisation (UUID)."),
    revoked: bool = typer.Option(False, "--revoked", help="Also show revoked tokens."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Tokens (never their values), oldest first."""
    org_id = parse_uuid(org, "--org") if org is not None else None
    ledger = open_ledger(load_settings())
    try:
        records = ApiTokens(ledger.engine).list(org_id, include_revoked=revoked)
    finally:
        ledger.dispose()
    if json_output:
        print_json([r.model_dump(mode="json") for r in records])
        return
    rows = [[str(r.id), str(r.org_id), r.name, format_time(r.created_at), format_time(r.revoked_at)] for r in records]
    print_table(["id", "org", "name", "created", "revoked"], rows, title="API tokens (times UTC)", markup=False)


@tokens_app.command("revoke")
@handle_errors
def tokens_revoke(token_id: str = typer.Argument(..., help="The token's id (from `tokens list`).")) -> None:
    """Revoke a token: requests with it get 401 from then on."""
    tid = parse_uuid(token_id, "token id")
    ledger = open_ledger(load_settings())
    try:
        record = ApiTokens(ledger.engine).revoke(tid)
    finally:
        ledger.dispose()
    out.print(f"token {record.id} ({record.name}, org {record.org_id}) revoked at {format_time(record.revoked_at)} UTC",
              highlight=False, markup=False)
