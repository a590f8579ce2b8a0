"""An FTPS connection end to end: added and tested with the CLI, the demo's sample orders
delivered by the real worker to the real FTPS server, `dropzone erp-sim` answering them
over FTPS, and the worker taking the answers (ACKED / FAILED, acks moved)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from dropzone.export_v1 import render_export, validate_draft
from starter.api import export_handle, start_export
from starter.demo import REJECTED_CUSTOMER, sample_drafts
from tests.conftest import add_connection
from tests.fixtures.ftps import FtpsServerInfo
from tests.fixtures.operators import CliRunner
from tests.helpers import eventually, eventually_sync, make_draft, pending_activity, sha256_of, wait_for_state

pytestmark = pytest.mark.asyncio(loop_scope="session")

REPO = Path(__file__).resolve().parents[1]


def config_file(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / f"conn-{uuid.uuid4().hex[:8]}.json"
    path.touch(mode=0o600)  # it holds the password
    path.write_text(json.dumps(raw))
    return path


async def add(dropzone_cli: CliRunner, tmp_path: Path, org_id: uuid.UUID, raw: dict[str, Any]) -> Any:
    return await dropzone_cli(
        "connections", "add", "--org", str(org_id), "--config-file", str(config_file(tmp_path, raw)), "--json"
    )


async def test_connections_add_and_test_an_ftps_connection(
    dropzone_cli: CliRunner, ftps_server: FtpsServerInfo, tmp_path: Path
) -> None:
    raw = ftps_server.config()
    added = await add(dropzone_cli, tmp_path, uuid.uuid4(), raw)
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    assert shown["config"]["mode"] == "ftps" and shown["config"]["password"] == "***"
    assert "warning" not in added.stderr

    before = len(ftps_server.commands())
    tested = await dropzone_cli("connections", "test", shown["id"])
    assert tested.returncode == 0, tested.stderr
    assert f"ok: ftps://{ftps_server.username}@127.0.0.1:{ftps_server.port}" in tested.stdout
    assert "wrote, read back and deleted a probe file" in tested.stdout
    assert {"STOR", "RETR", "DELE"} <= set(ftps_server.commands()[before:])
    assert list(ftps_server.local_path(raw["export_path"]).iterdir()) == []
    assert ftps_server.password not in added.stdout + added.stderr + tested.stdout + tested.stderr

    # The same connection with a certificate the server does not have: one clear line, exit 1.
    pinned = await add(dropzone_cli, tmp_path, uuid.uuid4(), {**raw, "server_fingerprint": "SHA256:" + "A" * 43})
    refused = await dropzone_cli("connections", "test", json.loads(pinned.stdout)["id"])
    assert refused.returncode != 0 and "Traceback" not in refused.stdout + refused.stderr
    assert "certificate on the control channel is" in refused.stderr and "nothing was sent" in refused.stderr
    assert ftps_server.fingerprint in refused.stderr


async def test_connections_add_warns_about_plain_ftp(
    dropzone_cli: CliRunner, plain_ftp_server: FtpsServerInfo, tmp_path: Path
) -> None:
    added = await add(dropzone_cli, tmp_path, uuid.uuid4(), plain_ftp_server.config())
    assert added.returncode == 0, added.stderr
    assert "warning:" in added.stderr and "is plain FTP (allow_insecure_plaintext)" in added.stderr
    assert plain_ftp_server.password not in added.stderr + added.stdout


async def test_the_demos_orders_go_over_ftps_and_erp_sim_answers_them(
    client, run_worker, dropzone_cli: CliRunner, dropzone_env: dict[str, str],  # type: ignore[no-untyped-def]
    ftps_server: FtpsServerInfo, tmp_path: Path,
) -> None:
    org_id = uuid.uuid4()
    raw = {**ftps_server.config(), "poll_interval_seconds": 1}
    added = await add(dropzone_cli, tmp_path, org_id, raw)
    assert added.returncode == 0, added.stderr
    connection_id = uuid.UUID(json.loads(added.stdout)["id"])
    export_dir, ack_dir = ftps_server.local_path(raw["export_path"]), ftps_server.local_path(raw["ack_path"])

    drafts = sample_drafts(4)
    for draft in drafts:
        draft["org_id"] = str(org_id)
    rejected = next(d for d in drafts if d["customer"]["erp_customer_number"] == REJECTED_CUSTOMER)
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "starter.cli", "erp-sim", "--connection", str(connection_id),
        "--reject-customer", REJECTED_CUSTOMER, "--interval", "0.2",
        env=dropzone_env, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        async with run_worker(client) as queue:
            for draft in drafts:
                await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
            states = {
                d["draft_order_id"]: await wait_for_state(
                    client, d["draft_order_id"], lambda s: s.status in ("ACKED", "FAILED"), timeout=120
                )
                for d in drafts
            }
            # The worker moves every answer it took into processed/ or error/.
            await eventually(
                lambda: not [p for p in ack_dir.iterdir() if p.is_file()], timeout=60,
                what="the worker moving every ack out of ack_path",
            )
    finally:
        sim.send_signal(signal.SIGINT)
        # Wait for the exit, then read: a communicate() cut off by a timeout loses what
        # it had read (its output is a few lines, far below a pipe's buffer).
        try:
            await asyncio.wait_for(sim.wait(), 90)
        except TimeoutError:
            sim.kill()
            await sim.wait()
        assert sim.stdout is not None and sim.stderr is not None
        out, err = await sim.stdout.read(), await sim.stderr.read()

    for draft_id, state in states.items():
        if draft_id == rejected["draft_order_id"]:
            assert state.status == "FAILED" and state.last_error is not None
            assert state.last_error.code == "INVALID_CUSTOMER"
        else:
            assert state.status == "ACKED" and (state.erp_order_id or "").startswith("SO-"), state
    delivered = sorted(p.name for p in export_dir.iterdir())
    assert len(delivered) == len(drafts) and not [n for n in delivered if n.endswith(".tmp")]
    # Every answer taken and moved to processed/ (error/ is for answers the worker refuses).
    assert sorted(p.name.split("_", 1)[0] for p in (ack_dir / "processed").iterdir()) == ["ack"] * 3 + ["error"]
    assert not (ack_dir / "error").exists() or not list((ack_dir / "error").iterdir())
    text = out.decode() + err.decode()
    assert text.count("ACKED ") == 3 and "INVALID_CUSTOMER" in text, text
    assert ftps_server.password not in text and "Traceback" not in text


async def test_a_server_crash_mid_upload_is_retried_by_temporal_into_one_intact_file(
    client, run_worker, ledger, object_store, ftps_server: FtpsServerInfo,  # type: ignore[no-untyped-def]
) -> None:
    org_id = uuid.uuid4()
    raw = ftps_server.config()
    raw.pop("ack_path")
    connection_id = add_connection(ledger, org_id, raw)
    export_dir = ftps_server.local_path(raw["export_path"])
    draft = make_draft(org_id=org_id, lines=40_000)  # ~10 MB: long enough to be cut off
    expected = render_export(validate_draft(draft))
    crashed = threading.Event()

    def crash_when_the_tmp_appears() -> None:
        with contextlib.suppress(AssertionError):  # no upload began: the test says so below
            eventually_sync(
                lambda: any(n.endswith(".tmp") for n in os.listdir(export_dir)), timeout=60, every=0.0005,
                what="a .tmp in the FTPS export directory",
            )
            ftps_server.stop()  # SIGKILL mid-upload: the partial .tmp stays on the server's disk
            crashed.set()

    async def a_retry_failed() -> bool:
        pending = await pending_activity(client, draft["draft_order_id"], "deliver")
        return pending is not None and pending.attempt >= 3 and pending.HasField("last_failure")

    watcher = threading.Thread(target=crash_when_the_tmp_appears, daemon=True)
    watcher.start()
    try:
        async with run_worker(client) as queue:
            await start_export(client, erp_connection_id=connection_id, draft=draft, store=object_store, task_queue=queue)
            await asyncio.get_running_loop().run_in_executor(None, crashed.wait, 60)
            assert crashed.is_set(), "the delivery never started"
            await eventually(a_retry_failed, what="a retry failing against the stopped FTPS server")
            ftps_server.start()
            result = await asyncio.wait_for(export_handle(client, draft["draft_order_id"]).result(), 90)
    finally:
        ftps_server.start()  # idempotent: the session's server stays up for the other tests
    assert result.status == "SENT"
    assert [p.name for p in export_dir.iterdir()] == [result.filename]  # no .tmp of any attempt left
    assert sha256_of(export_dir / result.filename) == sha256_of(expected)
