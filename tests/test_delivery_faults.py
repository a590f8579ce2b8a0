"""Delivery under faults, end to end: SFTP server down mid-delivery, wrong password,
and a final name that already exists."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.exports import ExportActivities
from dropzone.contracts import DeliverInput, OpenAttemptInput, RenderInput
from dropzone.export_v1 import render_export, validate_draft
from starter.api import export_handle, start_export
from tests.conftest import add_connection
from tests.helpers import eventually, eventually_sync, make_draft, pending_activity, sha256_of, wait_for_state

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _stop_when_tmp_appears(directory: Path, server, stopped: threading.Event, give_up: float) -> None:  # type: ignore[no-untyped-def]
    """Stop the SFTP server the moment a temp file shows up: a crash mid-upload."""
    def tmp_appeared() -> bool:
        return any(name.endswith(".tmp") for name in os.listdir(directory))

    # FileNotFoundError: the test has already ended; AssertionError: no upload began (the test says so).
    with contextlib.suppress(FileNotFoundError, AssertionError):
        eventually_sync(tmp_appeared, timeout=give_up, every=0.0005, what="a temp file")
        server.stop()
        stopped.set()


async def a_retry_failed(client: Client, draft_order_id: str) -> bool:
    """The deliver is on its third execution: the first (cut off) and a retry have failed."""
    pending = await pending_activity(client, draft_order_id, "deliver")
    return pending is not None and pending.attempt >= 3 and pending.HasField("last_failure")


async def test_sftp_server_stopped_mid_delivery_then_restarted_delivers_once(
    client: Client, run_worker, openssh_server, ledger, object_store
):
    org_id = uuid.uuid4()
    config = openssh_server.config(poll_interval_seconds=1)
    config.pop("ack_path")
    connection_id = add_connection(ledger, org_id, config)
    export_dir = openssh_server.local_path(config["export_path"])
    # ~10 MB so that the upload takes long enough to be interrupted.
    draft = make_draft(org_id=org_id, lines=40_000)
    expected = render_export(validate_draft(draft))

    stopped = threading.Event()
    watcher = threading.Thread(
        target=_stop_when_tmp_appears, args=(export_dir, openssh_server, stopped, 60), daemon=True
    )
    watcher.start()
    try:
        async with run_worker(client) as queue:
            await start_export(
                client, erp_connection_id=connection_id, draft=draft, store=object_store, task_queue=queue
            )
            await asyncio.get_running_loop().run_in_executor(None, stopped.wait, 60)
            assert stopped.is_set(), "delivery never started"
            await eventually(  # at least one failed retry against the stopped server
                lambda: a_retry_failed(client, draft["draft_order_id"]), what="a retry failing against the stopped server"
            )
            openssh_server.start()
            result = await asyncio.wait_for(export_handle(client, draft["draft_order_id"]).result(), 90)
    finally:
        openssh_server.start()  # idempotent: leave the session server running for other tests
    assert result.status == "SENT"
    finals = [p for p in export_dir.iterdir() if p.name.endswith(".json")]
    assert [p.name for p in finals] == [result.filename]
    assert sha256_of(finals[0]) == sha256_of(expected)
    row = ledger.get_export(result.export_id)
    assert row.status == "SENT" and row.size_bytes == len(expected)


async def test_wrong_password_fails_fast_without_retry_storm(client: Client, run_worker, openssh_server, ledger):
    org_id = uuid.uuid4()
    config = openssh_server.config(password="not-the-password", poll_interval_seconds=1)
    connection_id = add_connection(ledger, org_id, config)
    draft = make_draft(org_id=org_id)
    attempts_before = openssh_server.auth_attempts(config["username"])
    began = time.monotonic()
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
        state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "FAILED")
        elapsed = time.monotonic() - began
        history = await export_handle(client, draft["draft_order_id"]).fetch_history()
    assert elapsed < 10
    assert state.last_error is not None and state.last_error.code == "AUTH_FAILED"
    assert "not-the-password" not in state.last_error.message
    row = ledger.get_export(state.export_id)
    assert row.status == "FAILED" and row.error_json["code"] == "AUTH_FAILED"
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(started) == 1, "a permanent error must not be retried"
    assert openssh_server.auth_attempts(config["username"]) - attempts_before <= 3


@pytest.fixture
def activity_env() -> ActivityEnvironment:
    return ActivityEnvironment()


def _prepared_attempt(adapters, fs_target, activity_env):  # type: ignore[no-untyped-def]
    activities = ExportActivities(adapters.ledger, adapters.store, adapters.connectors)
    draft = make_draft(org_id=fs_target.org_id)
    attempt = activity_env.run(
        activities.open_attempt,
        OpenAttemptInput(
            erp_connection_id=fs_target.connection_id,
            draft_order_id=uuid.UUID(draft["draft_order_id"]),
            org_id=fs_target.org_id,
            workflow_id="test",
            workflow_run_id=str(uuid.uuid4()),
            run_seq=1,
        ),
    )
    activity_env.run(activities.render_and_store, RenderInput(export_id=attempt.export_id, draft=draft))
    return activities, attempt, render_export(validate_draft(draft))


async def test_final_name_with_same_bytes_counts_as_delivered(adapters, fs_target, activity_env):
    activities, attempt, body = _prepared_attempt(adapters, fs_target, activity_env)
    (fs_target.export_dir / attempt.filename).write_bytes(body)
    outcome = activity_env.run(activities.deliver, DeliverInput(export_id=attempt.export_id))
    assert outcome.already_present
    assert adapters.ledger.get_export(attempt.export_id).status == "SENT"


async def test_final_name_with_other_bytes_is_a_permanent_conflict(adapters, fs_target, activity_env):
    activities, attempt, body = _prepared_attempt(adapters, fs_target, activity_env)
    final = fs_target.export_dir / attempt.filename
    final.write_bytes(b'{"someone": "else"}\n')
    with pytest.raises(ApplicationError) as info:
        activity_env.run(activities.deliver, DeliverInput(export_id=attempt.export_id))
    assert info.value.type == "DELIVERY_CONFLICT" and info.value.non_retryable
    assert final.read_bytes() == b'{"someone": "else"}\n'
    assert not list(fs_target.export_dir.glob("*.tmp"))
    assert adapters.ledger.get_export(attempt.export_id).status == "PENDING"


async def test_open_attempt_twice_is_one_row(adapters, fs_target, activity_env):
    activities = ExportActivities(adapters.ledger, adapters.store, adapters.connectors)
    draft_id = uuid.uuid4()
    request = OpenAttemptInput(
        erp_connection_id=fs_target.connection_id, draft_order_id=draft_id, org_id=fs_target.org_id,
        workflow_id="w", workflow_run_id="r", run_seq=1,
    )
    first = activity_env.run(activities.open_attempt, request)
    second = activity_env.run(activities.open_attempt, request)
    assert first == second
    assert len(adapters.ledger.list_exports(draft_order_id=draft_id)) == 1
