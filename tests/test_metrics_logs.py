"""The worker as operators see it: /metrics after real exports, JSON logs with context, no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url
from temporalio.client import Client

from dropzone.logging_setup import ALWAYS_QUIET, CHATTY_LIBRARIES, configure_logging
from starter.api import retry_export, start_export
from tests.fixtures.operators import REPO_ROOT, WORKER
from tests.helpers import (
    ack_body,
    error_body,
    eventually,
    free_port,
    make_draft,
    wait_for_state,
    write_ack_atomically,
)
from workflows import policies

session_loop = pytest.mark.asyncio(loop_scope="session")

WAIT = 90.0  # generous: the machine is shared with other test runs


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name → [(labels, value)] for every sample on the endpoint."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(value for found, value in samples.get(name, []) if labels.items() <= found.items())


async def export_until_waiting_for_ack(client: Client, target, queue: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    draft = make_draft(org_id=target.org_id)
    await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
    state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.waiting_for == "ack", timeout=WAIT)
    assert state.filename is not None
    return draft["draft_order_id"], state.filename


@session_loop
async def test_worker_serves_sdk_and_export_metrics(worker_process, client: Client, fs_target, ledger):
    org = str(fs_target.org_id)
    port = free_port()
    async with worker_process(DROPZONE_METRICS_PORT=str(port)) as worker:
        acked, acked_file = await export_until_waiting_for_ack(client, fs_target, worker.task_queue)
        # A malformed ack first: moved to error/ and counted, then the good one.
        write_ack_atomically(fs_target.ack_dir, f"ack_{acked_file}", b'{"status": "ACKED", "erp_ord')
        await eventually((fs_target.ack_dir / "error" / f"ack_{acked_file}").exists, timeout=WAIT, what="the bad ack in error/")
        write_ack_atomically(fs_target.ack_dir, f"ack_{acked_file}", ack_body("SO-1"))

        rejected, rejected_file = await export_until_waiting_for_ack(client, fs_target, worker.task_queue)
        write_ack_atomically(fs_target.ack_dir, f"error_{rejected_file}", error_body())
        await wait_for_state(client, rejected, lambda s: s.status == "FAILED", timeout=WAIT)
        await retry_export(client, rejected, reason="customer fixed")
        second = await wait_for_state(client, rejected, lambda s: s.attempt == 2 and s.waiting_for == "ack", timeout=WAIT)
        write_ack_atomically(fs_target.ack_dir, f"ack_{second.filename}", ack_body("SO-2"))
        for draft_id in (acked, rejected):
            await wait_for_state(client, draft_id, lambda s: s.status == "ACKED", timeout=WAIT)

        samples = await asyncio.to_thread(scrape, worker.metrics_url)

    rows = ledger.list_exports(org_id=fs_target.org_id)
    assert len(rows) == 3
    # Our metrics, by org and status (summed over the activities that report them).
    assert total(samples, "dropzone_exports_total", org_id=org, status="PENDING") == 3
    assert total(samples, "dropzone_exports_total", org_id=org, status="SENT") == 3
    assert total(samples, "dropzone_exports_total", org_id=org, status="ACKED") == 2
    assert total(samples, "dropzone_exports_total", org_id=org, status="FAILED") == 1
    assert total(samples, "dropzone_export_retries_total", org_id=org) == 1
    assert total(samples, "dropzone_delivered_bytes_total", org_id=org) == sum(r.size_bytes or 0 for r in rows)
    assert total(samples, "dropzone_delivery_duration_seconds_count", org_id=org, outcome="ok") == 3
    assert total(samples, "dropzone_ack_latency_seconds_count", org_id=org, status="ACKED") == 2
    assert total(samples, "dropzone_ack_latency_seconds_count", org_id=org, status="FAILED") == 1
    assert total(samples, "dropzone_ack_latency_seconds_sum", org_id=org) > 0
    assert total(samples, "dropzone_acks_rejected_total", org_id=org) == 1
    # The wide buckets: an ack may come days later.
    buckets = {labels["le"] for labels, _ in samples["dropzone_ack_latency_seconds_bucket"]}
    assert "604800" in buckets or "604800.0" in buckets
    # The Temporal SDK's own metrics, on the same endpoint.
    queue = worker.task_queue
    assert total(samples, "temporal_activity_execution_latency_seconds_count", activity_type="deliver", task_queue=queue) == 3
    assert total(samples, "temporal_workflow_completed_total", task_queue=queue) == 2
    assert total(samples, "temporal_worker_task_slots_available", task_queue=queue) > 0


@session_loop
async def test_metrics_port_in_use_stops_the_worker_with_one_clear_line(dropzone_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *WORKER, env={**dropzone_env, "DROPZONE_METRICS_PORT": str(port)}, cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), WAIT)
    output = (stdout + stderr).decode()
    assert proc.returncode == 2, output
    assert f"cannot serve metrics on 127.0.0.1:{port}" in output and "Address already in use" in output
    assert "Traceback" not in output


@session_loop
async def test_sftp_export_logs_json_with_context_and_no_secrets(
    worker_process, client: Client, openssh_server, ledger, dropzone_env, config_key
):
    from tests.conftest import add_connection

    org_id = uuid.uuid4()
    config = openssh_server.config(poll_interval_seconds=1)
    connection_id = add_connection(ledger, org_id, config)
    ack_dir = openssh_server.local_path(config["ack_path"])
    draft = make_draft(org_id=org_id)
    did = draft["draft_order_id"]
    # DEBUG: paramiko and botocore speak too — the riskiest setting for secrets.
    async with worker_process(DROPZONE_LOG_LEVEL="DEBUG") as worker:
        await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=worker.task_queue)
        state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack", timeout=WAIT)
        write_ack_atomically(ack_dir, f"ack_{state.filename}", ack_body("SO-7"))
        await wait_for_state(client, did, lambda s: s.status == "ACKED", timeout=WAIT)
    text = worker.log_text()
    records = worker.log_records()  # every line is JSON (not on a terminal)

    db_password = make_url(dropzone_env["DROPZONE_DATABASE_URL"]).password
    secrets = [openssh_server.password, dropzone_env["DROPZONE_S3_SECRET_KEY"], config_key, *([db_password] if db_password else [])]
    for secret in secrets:
        assert secret not in text
    assert "Signature=" not in text  # botocore's request signatures are masked or never logged

    export_id = str(state.export_id)
    # The export's own activities, and the lines the connection's ack listener writes about its answer.
    activity_lines = [
        r for r in records
        if r.get("logger") == "dropzone.activity" and not str(r.get("workflow_id")).startswith(policies.LISTENER_ID_PREFIX)
    ]
    events = {r["event"] for r in activity_lines}
    assert {"attempt opened", "export delivered", "ack received"} <= events
    for record in activity_lines:
        assert record["workflow_id"] == f"erp-export-{did}"
        assert record["draft_order_id"] == did and record["org_id"] == str(org_id)
        assert isinstance(record["attempt"], int) and record["activity_type"]
        if record["event"] != "attempt opened":
            assert record["export_id"] == export_id
    delivered = next(r for r in activity_lines if r["event"] == "export delivered")
    assert delivered["activity_type"] == "deliver" and delivered["size_bytes"] > 0
    # Library lines logged inside an activity carry the same context (botocore runs in the activity's thread).
    library = [r for r in records if str(r.get("logger", "")).startswith("botocore") and r.get("export_id") == export_id]
    assert library, "no botocore DEBUG line carried the activity's context"
    assert all(r["org_id"] == str(org_id) for r in library)


@pytest.fixture
def isolated_logging() -> Iterator[io.StringIO]:
    """configure_logging() into a buffer; the process's logging is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {name: logging.getLogger(name).level for name in (*CHATTY_LIBRARIES, *ALWAYS_QUIET)}
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        structlog.reset_defaults()


def test_redaction_drops_credential_keys_and_masks_them_in_text(isolated_logging):
    log = structlog.get_logger("test")
    log.info("connecting", host="sftp.example.com", password="hunter2",
             config={"username": "orderflow", "ssh_key": "-----BEGIN KEY-----", "nested": [{"Authorization": "Bearer t0k"}]})
    logging.getLogger("botocore.endpoint").debug(
        "Sending http request: headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AK/x, Signature=abc123'}"
    )
    logging.getLogger("paramiko.transport").debug("auth with password=hunter3 done", extra={"client_secret": "s3cr3t"})
    lines = [json.loads(line) for line in isolated_logging.getvalue().splitlines()]
    text = isolated_logging.getvalue()
    for secret in ("hunter2", "hunter3", "BEGIN KEY", "Bearer t0k", "abc123", "s3cr3t"):
        assert secret not in text
    assert lines[0]["host"] == "sftp.example.com" and lines[0]["config"]["username"] == "orderflow"
    assert "password" not in lines[0] and "ssh_key" not in lines[0]["config"]
    assert lines[0]["config"]["nested"] == [{}]
    assert "[REDACTED]" in lines[1]["event"] and "[REDACTED]" in lines[2]["event"]


def test_libraries_stay_quiet_unless_debug(isolated_logging):
    configure_logging("INFO", "json", stream=isolated_logging)
    logging.getLogger("paramiko.transport").info("kex details")
    logging.getLogger("botocore.auth").warning("kept: warnings still pass")
    logging.getLogger("dropzone.test").info("ours")
    events = [json.loads(line)["event"] for line in isolated_logging.getvalue().splitlines()]
    assert events == ["kept: warnings still pass", "ours"]
    configure_logging("DEBUG", "json", stream=isolated_logging)
    assert logging.getLogger("paramiko").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("botocore.auth").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("sqlalchemy.engine").getEffectiveLevel() == logging.WARNING  # SQL parameters
