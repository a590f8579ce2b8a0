"""`dropzone connections …`: add, list, test, rotate-keys.

Secrets never go on the command line: they are read from files or standard
input (``--password-file``, ``--ssh-key-file``, ``--ssh-key-passphrase-file``;
see starter/cli/connection_input.py). Output shows secrets as ``***``. What
``test`` shows and pins of the server (SSH host key, FTPS certificate) is
starter/cli/hostkeys.py.
"""

from __future__ import annotations

from typing import Any

import typer

from dropzone.connection_config import config_to_storable, redacted
from dropzone.connectors import DROPZONE_JSON_V1, default_registry
from dropzone.errors import DropzoneError
from dropzone.settings import load_settings
from starter.cli.common import (
    EXIT_FAILED,
    connections_app,
    fail,
    handle_errors,
    open_ledger,
    out,
    parse_uuid,
    print_json,
    print_table,
)
from starter.cli.connection_input import (
    STDIN,
    apply_secret_files,
    apply_webhook,
    check_ssh_key,
    flag_config,
    load_config_file,
    one_stdin_reader,
    warn_plaintext,
)
from starter.cli.hostkeys import TRUST_HINT, approved_fingerprint, show_and_pin, unvouched

# --- commands ---------------------------------------------------------------------


@connections_app.command("add")
@handle_errors
def connections_add(
    org: str = typer.Option(..., "--org", help="Organisation UUID."),
    config_file: str | None = typer.Option(
        None, "--config-file", help="JSON config (see the README, Configuration); '-' reads stdin. Better without secrets in it."
    ),
    mode: str | None = typer.Option(None, "--mode", help="'filesystem' or 'sftp', for a config from flags."),
    host: str | None = typer.Option(None, "--host"),
    port: int | None = typer.Option(None, "--port"),
    username: str | None = typer.Option(None, "--username"),
    host_key: str | None = typer.Option(
        None, "--host-key", help="Pin: 'SHA256:…' or 'ssh-ed25519 AAAA…' (or pin later with 'test --trust SHA256:…')."
    ),
    export_path: str | None = typer.Option(None, "--export-path"),
    ack_path: str | None = typer.Option(None, "--ack-path"),
    poll_interval: int | None = typer.Option(None, "--poll-interval", help="Seconds between ack polls."),
    file_mode: str | None = typer.Option(None, "--file-mode", help="Mode of delivered files, e.g. 0640."),
    password_file: str | None = typer.Option(
        None, "--password-file", help="File holding the SFTP password (mode 0600); '-' reads stdin."
    ),
    ssh_key_file: str | None = typer.Option(
        None, "--ssh-key-file", help="Private key file (mode 0600); '-' reads stdin."
    ),
    ssh_key_passphrase_file: str | None = typer.Option(
        None, "--ssh-key-passphrase-file", help="File holding the key's passphrase (mode 0600); '-' reads stdin."
    ),
    webhook_url: str | None = typer.Option(
        None, "--webhook-url", help="Status callbacks: POST every transition of an export here (README)."
    ),
    webhook_secret_file: str | None = typer.Option(
        None, "--webhook-secret-file", help="File holding the whsec_… secret that signs them (mode 0600); '-' reads stdin."
    ),
    connector_type: str = typer.Option(DROPZONE_JSON_V1, "--type"),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Add a connection; the config is validated, then stored encrypted."""
    org_id = parse_uuid(org, "--org")
    one_stdin_reader(config_file, password_file, ssh_key_file, ssh_key_passphrase_file)
    flags = {
        "host": host,
        "port": port,
        "username": username,
        "host_key": host_key,
        "export_path": export_path,
        "ack_path": ack_path,
        "poll_interval_seconds": poll_interval,
        "file_mode": file_mode,
    }
    if config_file is not None:
        raw = load_config_file(config_file)
        raw.update({k: v for k, v in flags.items() if v is not None})
    else:
        raw = flag_config(mode, flags)
    apply_secret_files(raw, password_file, ssh_key_file, ssh_key_passphrase_file)
    apply_webhook(raw, webhook_url, webhook_secret_file, config_file, password_file, ssh_key_file, ssh_key_passphrase_file)
    config = default_registry().get(connector_type).parse_config(raw)
    check_ssh_key(config, ssh_key_file if ssh_key_file not in (None, STDIN) else None)
    warn_plaintext(config)
    ledger = open_ledger(load_settings())
    try:
        summary = ledger.add_connection(org_id, connector_type, config_to_storable(config))
    finally:
        ledger.dispose()
    if json_output:
        print_json(
            {"id": str(summary.id), "org_id": str(org_id), "connector_type": connector_type, "config": redacted(config)}
        )
    else:
        out.print(f"connection {summary.id} added for org {org_id} ({connector_type})", highlight=False)
        if what := unvouched(config):
            out.print(
                f"{what} not pinned yet: run 'dropzone connections test {summary.id}', check the "
                f"fingerprint with the server's operator, then rerun with {TRUST_HINT}",
                highlight=False,
            )


@connections_app.command("update")
@handle_errors
def connections_update(
    connection_id: str = typer.Argument(..., help="Connection UUID."),
    config_file: str | None = typer.Option(
        None, "--config-file", help="JSON with the fields to change (merged into the stored config); '-' reads stdin."
    ),
    export_path: str | None = typer.Option(None, "--export-path"),
    ack_path: str | None = typer.Option(None, "--ack-path"),
    poll_interval: int | None = typer.Option(None, "--poll-interval"),
    password_file: str | None = typer.Option(None, "--password-file", help="New SFTP password (file mode 0600)."),
    ssh_key_file: str | None = typer.Option(None, "--ssh-key-file", help="New private key file (mode 0600)."),
    ssh_key_passphrase_file: str | None = typer.Option(None, "--ssh-key-passphrase-file"),
    webhook_url: str | None = typer.Option(
        None, "--webhook-url", help="Status callbacks: POST every transition of an export here (README)."
    ),
    webhook_secret_file: str | None = typer.Option(
        None, "--webhook-secret-file", help="File holding the whsec_… secret that signs them (mode 0600); '-' reads stdin."
    ),
    active: bool | None = typer.Option(
        None, "--activate/--deactivate",
        help="--deactivate: no new attempt and no ack poll on this connection (CONNECTION_INACTIVE); --activate undoes it.",
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Change a connection's config (e.g. rotated ERP credentials); validated, then stored encrypted."""
    cid = parse_uuid(connection_id, "connection")
    one_stdin_reader(config_file, password_file, ssh_key_file, ssh_key_passphrase_file)
    config_options = (
        config_file, export_path, ack_path, poll_interval, password_file, ssh_key_file, ssh_key_passphrase_file,
        webhook_url, webhook_secret_file,
    )
    if active is not None and all(option is None for option in config_options):
        # Only switching: the stored config is left alone (it need not even decrypt).
        _set_active(cid, active, json_output)
        return
    ledger = open_ledger(load_settings())
    try:
        record = ledger.get_connection(cid)
        raw = dict(record.config)
        if config_file is not None:
            raw.update(load_config_file(config_file))
        flags = {"export_path": export_path, "ack_path": ack_path, "poll_interval_seconds": poll_interval}
        raw.update({k: v for k, v in flags.items() if v is not None})
        apply_secret_files(raw, password_file, ssh_key_file, ssh_key_passphrase_file)
        apply_webhook(
            raw, webhook_url, webhook_secret_file, config_file, password_file, ssh_key_file, ssh_key_passphrase_file
        )
        config = default_registry().get(record.connector_type).parse_config(raw)
        check_ssh_key(config, ssh_key_file if ssh_key_file not in (None, STDIN) else None)
        warn_plaintext(config)
        ledger.update_connection_config(cid, config_to_storable(config))
    finally:
        ledger.dispose()
    if active is not None:
        _set_active(cid, active, json_output, quiet=json_output)
    if json_output:
        print_json({"id": str(cid), "config": redacted(config), **({"active": active} if active is not None else {})})
    else:
        out.print(f"connection {cid} updated; check it with 'dropzone connections test {cid}'", highlight=False)


def _set_active(cid: Any, active: bool, json_output: bool, *, quiet: bool = False) -> None:
    ledger = open_ledger(load_settings())
    try:
        ledger.set_connection_active(cid, active)
    finally:
        ledger.dispose()
    if quiet:
        return
    if json_output:
        print_json({"id": str(cid), "active": active})
    elif active:
        out.print(f"connection {cid} activated: new attempts and ack polls run again", highlight=False)
    else:
        out.print(
            f"connection {cid} deactivated: new attempts and ack polls fail with CONNECTION_INACTIVE "
            "until 'dropzone connections update ID --activate'",
            highlight=False,
        )


@connections_app.command("list")
@handle_errors
def connections_list(
    org: str | None = typer.Option(None, "--org"),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """List connections (never their configs or secrets)."""
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
    trust: str | None = typer.Option(
        None, "--trust", metavar="SHA256:…",
        help="Pin the server's SSH host key or FTPS certificate if its fingerprint is this one (the one its operator confirmed).",
    ),
    replace_pin: bool = typer.Option(
        False, "--replace-pin", help="With --trust: replace an existing, different pin."
    ),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Write and delete a probe file in the dropzone; show the SFTP host key or the FTPS certificate."""
    cid = parse_uuid(connection_id, "connection")
    approved = approved_fingerprint(trust, replace_pin)
    ledger = open_ledger(load_settings())
    registry = default_registry()
    report: dict[str, Any] = {"id": str(cid)}
    try:
        record = ledger.get_connection(cid)
        connector = registry.get(record.connector_type)
        config = show_and_pin(
            ledger, cid, connector.parse_config(record.config), approved, replace_pin, report, json_output
        )
        try:
            result = connector.test_connection(config)
        except DropzoneError:
            ledger.record_connection_test(cid, False)
            raise
        ledger.record_connection_test(cid, result.ok)
    finally:
        registry.close()
        ledger.dispose()
    report.update(ok=result.ok, dropzone=connector.describe(config), detail=result.detail)
    if json_output:
        print_json(report)
    if not result.ok:
        raise fail(f"connection {cid}: {result.detail}", EXIT_FAILED)
    if not json_output:
        out.print(f"connection {cid} ok: {connector.describe(config)} ({result.detail})", highlight=False)


@connections_app.command("rotate-keys")
@handle_errors
def connections_rotate_keys(json_output: bool = typer.Option(False, "--json")) -> None:
    """Re-encrypt every connection config with the FIRST key of DROPZONE_CONFIG_KEYS.

    Rotation: put the new key first (DROPZONE_CONFIG_KEYS=new,old) everywhere,
    run this once, then drop the old key. All rows or none are rewritten.
    """
    settings = load_settings()
    ledger = open_ledger(settings)
    try:
        count = ledger.rotate_keys()
    finally:
        ledger.dispose()
    keys = len(settings.config_key_list())
    if json_output:
        print_json({"rotated": count, "configured_keys": keys})
        return
    out.print(f"re-encrypted {count} connection config(s) with the first of {keys} configured key(s)", highlight=False)
    if keys > 1:
        out.print("every row now decrypts with the first key alone: the other keys can be removed", highlight=False)
