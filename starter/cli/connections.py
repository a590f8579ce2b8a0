"""`dropzone connections …`: add, list, test."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from dropzone.connection_config import redacted
from dropzone.connectors import DROPZONE_JSON_V1, default_registry
from dropzone.errors import DropzoneError, InvalidConfigError
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
