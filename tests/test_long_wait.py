"""Long waits on the time-skipping server: days pass in seconds.

A run that waits 30 days for an ack keeps its history small (it waits on a
timer; its connection's ack listener looks into ack_path, and continues as new
on the way), ends FAILED with ACK_TIMEOUT, and an ack that comes after that is
recorded, not lost: handed to the run while it waits for a retry signal, or
recorded by the listener once the run has moved on or closed.

Real worker, PostgreSQL ledger, SeaweedFS and a filesystem dropzone; only
Temporal's clock is skipped. Ack files are written the way an ERP writes them
(atomically); where a test needs a file to look old to the sweep (whose grace
is measured in wall-clock time), its mtime is set back, as if the ERP had
written it an hour ago.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.contracts import ExportState
from dropzone.ledger import ExportRecord, Ledger
from starter.api import cancel_export, export_handle, retry_export, start_export
from tests.chaos.observer import PartialReadObserver
from tests.chaos.report import record
from tests.chaos.scale import size
from tests.conftest import Target
from tests.fixtures.temporal import TEST_DATA_CONVERTER
from tests.helpers import ack_body, error_body, eventually, make_draft, wait_for_state, write_ack_atomically
from workflows import policies
from workflows.ack_listener import AckListenerWorkflow
from workflows.export_order import ExportOrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAY = 86_400
MAX_HISTORY_EVENTS = 10_000
# Short waits for the variants: an ack timeout of 20 polls of one second each.
SHORT_POLL_SECONDS = 1
SHORT_ACK_TIMEOUT_SECONDS = 20
# Older than the sweep's grace (SWEEP_GRACE_POLLS poll intervals) at one-second polls.
WRITTEN_AN_HOUR_AGO = 3600.0


def set_ack_timing(ledger: Ledger, target: Target, *, ack_timeout_seconds: int, poll_interval_seconds: int) -> None:
    config = parse_connection_config(
        {**target.config, "ack_timeout_seconds": ack_timeout_seconds, "poll_interval_seconds": poll_interval_seconds}
    )
    ledger.update_connection_config(target.connection_id, config_to_storable(config))


async def skip(env, duration: timedelta, *, step: timedelta = timedelta(days=1)) -> None:  # type: ignore[no-untyped-def]
    """Let ``duration`` pass on the test server a day at a time: one sleep call of
    30 days would outlast the RPC's own deadline while the polls run."""
    while duration > timedelta(0):
        await env.sleep(min(step, duration))
        duration -= step


def write_old_ack(ack_dir: Path, name: str, body: dict) -> Path:  # type: ignore[type-arg]
    path = write_ack_atomically(ack_dir, name, body)
    past = time.time() - WRITTEN_AN_HOUR_AGO
    os.utime(path, (past, past))
    return path


def poll_activities(history: WorkflowHistory) -> list[tuple[int, int]]:
    """(scheduled event id, attempts made) of every poll_ack in the history."""
    scheduled = {
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "poll_ack"
    }
    attempts = {
        e.activity_task_started_event_attributes.scheduled_event_id: e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id in scheduled
    }
    return [(event_id, attempts.get(event_id, 0)) for event_id in sorted(scheduled)]


def cancel_requested(history: WorkflowHistory) -> set[int]:
    return {
        e.activity_task_cancel_requested_event_attributes.scheduled_event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED
    }


def last_export_status(history: WorkflowHistory) -> str | None:
    """The ExportStatus search attribute as last upserted (what the UI filters on)."""
    status = None
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            if policies.SA_EXPORT_STATUS.name in fields:
                status = json.loads(fields[policies.SA_EXPORT_STATUS.name].data)
    return status


async def replays(history: WorkflowHistory) -> None:
    await Replayer(workflows=[ExportOrderWorkflow], data_converter=TEST_DATA_CONVERTER).replay_workflow(history)


def failed_with_ack_timeout(state: ExportState) -> bool:
    return state.status == "FAILED" and state.waiting_for == "retry_signal"


async def ledger_row(ledger: Ledger, export_id: uuid.UUID, predicate, *, timeout: float = 30.0) -> ExportRecord:  # type: ignore[no-untyped-def]
    """The row once ``predicate`` holds (the sweep runs inside another export's poll)."""
    rows: list[ExportRecord] = []

    def reached() -> ExportRecord | None:
        rows.append(ledger.get_export(export_id))
        return rows[-1] if predicate(rows[-1]) else None

    return await eventually(
        reached, timeout=timeout, every=0.2, what=lambda: f"export {export_id} reaching the expected state; last: {rows[-1:]}"
    )


async def run_into_ack_timeout(env, ledger: Ledger, target: Target, draft: dict, queue: str) -> ExportState:  # type: ignore[no-untyped-def, type-arg]
    """Start an export on a short ack timeout and wait (skipped time) until it is FAILED ACK_TIMEOUT.

    Returns the state while it waited for its ack (its attempt and file name).
    """
    set_ack_timing(
        ledger, target, ack_timeout_seconds=SHORT_ACK_TIMEOUT_SECONDS, poll_interval_seconds=SHORT_POLL_SECONDS
    )
    client, did = env.client, draft["draft_order_id"]
    await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
    waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
    await env.sleep(timedelta(seconds=SHORT_ACK_TIMEOUT_SECONDS + 5))
    await wait_for_state(client, did, failed_with_ack_timeout)
    return waiting


@pytest.mark.chaos
async def test_thirty_day_ack_wait_ends_ack_timeout_and_a_late_ack_is_recorded(
    time_skipping_env, run_worker, fs_target, ledger, dropzone_cli_in_process
):
    env, target = time_skipping_env, fs_target
    ack_timeout = timedelta(days=30)
    # The same 30 days either way: 720 hourly polls by default, 2,880 in the full run.
    poll_seconds = size(full=900, reduced=3600)
    set_ack_timing(ledger, target, ack_timeout_seconds=int(ack_timeout.total_seconds()), poll_interval_seconds=poll_seconds)
    client = env.client
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    with PartialReadObserver([target.export_dir]) as observer:
        async with run_worker(client) as queue:
            await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
            waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
            started_at = (await export_handle(client, did).describe()).start_time

            await skip(env, ack_timeout + timedelta(seconds=poll_seconds))  # the whole 30 days, in skipped time
            failed = await wait_for_state(client, did, failed_with_ack_timeout)
            assert failed.last_error is not None and failed.last_error.code == "ACK_TIMEOUT"
            row = ledger.get_export(waiting.export_id)
            assert row.status == "FAILED" and row.error_json["code"] == "ACK_TIMEOUT"
            waited = await env.get_current_time() - started_at

            # The ERP answers after the timeout; the run is still waiting for a retry signal.
            write_ack_atomically(target.ack_dir, f"ack_{waiting.filename}", ack_body("SO-LATE-30D"))
            await env.sleep(timedelta(seconds=2 * poll_seconds))
            result = await asyncio.wait_for(export_handle(client, did).result(), 60)
            history = await export_handle(client, did).fetch_history()
            listener = await client.get_workflow_handle(policies.listener_id_for(target.connection_id)).query(
                AckListenerWorkflow.state
            )
            # The listener hands the answer to the run, and only then moves the file.
            moved = target.ack_dir / "processed" / f"ack_{waiting.filename}"
            await eventually(moved.is_file, what=f"{moved} to appear")
    report = observer.report

    assert waited >= ack_timeout
    assert result.status == "ACKED" and result.erp_order_id == "SO-LATE-30D" and result.attempt == 1
    row = ledger.get_export(waiting.export_id)
    assert row.status == "ACKED" and row.erp_order_id == "SO-LATE-30D" and row.acked_at is not None
    assert row.error_json["code"] == "ACK_TIMEOUT" and row.error_json["late_ack"] is True
    assert not (target.ack_dir / f"ack_{waiting.filename}").exists()
    assert not (target.ack_dir / "error").exists()
    assert last_export_status(history) == "ACKED"

    # History: a handful of events per state change, none per poll.
    events = len(history.events)
    polls = poll_activities(history)
    assert events < MAX_HISTORY_EVENTS
    assert polls == []  # no poll of its own: the connection's listener looked for it
    ack_wait_polls = listener.listings
    assert ack_wait_polls >= ack_timeout.total_seconds() // poll_seconds - 1
    assert listener.runs >= 2 and listener.handed_over == 1  # continued as new on the way, counters kept
    assert events < 100
    await replays(history)

    # What an operator sees: ACKED with the ERP's order id, and that it came late.
    shown = await dropzone_cli_in_process("status", did, "--json")
    assert shown.returncode == 0, shown.stderr
    (attempt,) = json.loads(shown.stdout)["attempts"]
    assert attempt["status"] == "ACKED" and attempt["erp_order_id"] == "SO-LATE-30D"
    assert attempt["error"]["late_ack"] is True
    table = await dropzone_cli_in_process("status", did)
    assert "ACKED" in table.stdout and "SO-LATE-30D" in table.stdout and "late" in table.stdout
    print(table.stdout)

    exports = len(list(target.export_dir.glob(f"sales_order_{did[:8]}_*.json")))
    assert report.partial == []
    record(
        "long wait",
        exports=exports,
        faults={"ack after ack timeout": 1},
        days_waited=round(waited.total_seconds() / DAY, 2),
        history_events=events,
        ack_wait_polls=ack_wait_polls,
        lost=0 if row.status == "ACKED" else 1,
        duplicated=exports - 1,
        partial_reads=len(report.partial),
    )
    print(f"long wait: {events} history events after {waited} with {ack_wait_polls} polls")


@pytest.mark.chaos
async def test_late_error_keeps_it_failed_with_the_erps_error_and_a_retry_still_works(
    time_skipping_env, run_worker, fs_target, ledger
):
    env, target = time_skipping_env, fs_target
    client = env.client
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    with PartialReadObserver([target.export_dir]) as observer:
        async with run_worker(client) as queue:
            first = await run_into_ack_timeout(env, ledger, target, draft, queue)

            write_ack_atomically(target.ack_dir, f"error_{first.filename}", error_body("INVALID_CUSTOMER"))
            state = await wait_for_state(
                client, did, lambda s: s.last_error is not None and s.last_error.code == "INVALID_CUSTOMER"
            )
            assert state.status == "FAILED" and state.waiting_for == "retry_signal"
            row = await ledger_row(ledger, first.export_id, lambda r: r.answered_late)
            assert row.status == "FAILED" and row.error_json["code"] == "INVALID_CUSTOMER"
            assert row.error_json["late_ack"] is True and row.erp_order_id is None
            # Recorded first, then moved (a crash between the two re-finds a recorded answer).
            moved = target.ack_dir / "processed" / f"error_{first.filename}"
            await eventually(moved.is_file, what=f"{moved} to appear")

            # The ERP said no, so a retry is safe: a new attempt, a new file.
            await retry_export(client, did, reason="customer fixed")
            second = await wait_for_state(client, did, lambda s: s.attempt == 2 and s.waiting_for == "ack")
            write_ack_atomically(target.ack_dir, f"ack_{second.filename}", ack_body("SO-AFTER-LATE-ERROR"))
            result = await asyncio.wait_for(export_handle(client, did).result(), 60)
            history = await export_handle(client, did).fetch_history()
    report = observer.report

    assert result.status == "ACKED" and result.attempt == 2 and result.erp_order_id == "SO-AFTER-LATE-ERROR"
    rows = sorted(ledger.list_exports(draft_order_id=uuid.UUID(did)), key=lambda r: r.attempt)
    assert [(r.attempt, r.status) for r in rows] == [(1, "FAILED"), (2, "ACKED")]
    assert rows[0].error_json["code"] == "INVALID_CUSTOMER"
    polls = poll_activities(history)
    assert polls == [] and not cancel_requested(history)  # both waits were timers
    await replays(history)
    assert report.partial == []
    exports = len(list(target.export_dir.glob(f"sales_order_{did[:8]}_*.json")))
    record(
        "long wait: late error",
        exports=exports,
        faults={"error_ after ack timeout": 1},
        history_events=len(history.events),
        lost=0 if rows[0].answered_late else 1,
        duplicated=exports - len(rows),
        partial_reads=len(report.partial),
    )


@pytest.mark.chaos
async def test_retry_cancels_the_late_poll_and_the_sweep_records_the_old_attempts_late_ack(
    time_skipping_env, run_worker, fs_target, ledger
):
    env, target = time_skipping_env, fs_target
    client = env.client
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    with PartialReadObserver([target.export_dir]) as observer:
        async with run_worker(client) as queue:
            first = await run_into_ack_timeout(env, ledger, target, draft, queue)

            await retry_export(client, did, reason="operator did not wait")
            second = await wait_for_state(client, did, lambda s: s.attempt == 2 and s.waiting_for == "ack")
            # Attempt 1's ack comes now: the run waits for attempt 2's; the listener records it.
            write_old_ack(target.ack_dir, f"ack_{first.filename}", ack_body("SO-FIRST-LATE"))
            row = await ledger_row(ledger, first.export_id, lambda r: r.status == "ACKED")
            # Recorded first, then moved (a crash between the two re-finds a recorded answer).
            moved = target.ack_dir / "processed" / f"ack_{first.filename}"
            await eventually(moved.is_file, what=f"{moved} to appear")

            write_ack_atomically(target.ack_dir, f"ack_{second.filename}", ack_body("SO-SECOND"))
            result = await asyncio.wait_for(export_handle(client, did).result(), 60)
            history = await export_handle(client, did).fetch_history()
    report = observer.report

    assert row.erp_order_id == "SO-FIRST-LATE" and row.error_json["late_ack"] is True
    assert row.error_json["code"] == "ACK_TIMEOUT"
    assert result.status == "ACKED" and result.attempt == 2 and result.erp_order_id == "SO-SECOND"
    # Timers only: nothing to cancel when the retry came.
    assert poll_activities(history) == [] and not cancel_requested(history)
    assert ledger.list_ack_rejections(connection_id=target.connection_id) == []
    await replays(history)
    assert report.partial == []
    exports = len(list(target.export_dir.glob(f"sales_order_{did[:8]}_*.json")))
    record(
        "long wait: late ack after a retry",
        exports=exports,
        faults={"ack after ack timeout and retry": 1},
        history_events=len(history.events),
        lost=0 if row.status == "ACKED" else 1,
        duplicated=exports - 2,  # two attempts, two files: the operator asked for the second
        partial_reads=len(report.partial),
    )


@pytest.mark.chaos
async def test_sweep_records_a_late_ack_after_the_run_has_closed(time_skipping_env, run_worker, fs_target, ledger):
    env, target = time_skipping_env, fs_target
    set_ack_timing(
        ledger, target, ack_timeout_seconds=SHORT_ACK_TIMEOUT_SECONDS, poll_interval_seconds=SHORT_POLL_SECONDS
    )
    client = env.client
    closed, other = make_draft(org_id=target.org_id), make_draft(org_id=target.org_id)
    with PartialReadObserver([target.export_dir]) as observer:
        async with run_worker(client) as queue:
            await start_export(client, erp_connection_id=target.connection_id, draft=closed, task_queue=queue)
            first = await wait_for_state(client, closed["draft_order_id"], lambda s: s.waiting_for == "ack")
            await env.sleep(timedelta(seconds=SHORT_ACK_TIMEOUT_SECONDS + 5))
            await wait_for_state(client, closed["draft_order_id"], failed_with_ack_timeout)
            await cancel_export(client, closed["draft_order_id"], reason="given up")
            gave_up = await asyncio.wait_for(export_handle(client, closed["draft_order_id"]).result(), 60)
            assert gave_up.status == "FAILED" and gave_up.error is not None and gave_up.error.code == "ACK_TIMEOUT"

            # The run is closed; the ERP's ack comes anyway. The connection's
            # listener records the late ack (another export on it keeps it busy).
            write_old_ack(target.ack_dir, f"ack_{first.filename}", ack_body("SO-SWEPT"))
            await start_export(client, erp_connection_id=target.connection_id, draft=other, task_queue=queue)
            await wait_for_state(client, other["draft_order_id"], lambda s: s.waiting_for == "ack")
            row = await ledger_row(ledger, first.export_id, lambda r: r.status == "ACKED")
            # Recorded first, then moved.
            moved = target.ack_dir / "processed" / f"ack_{first.filename}"
            await eventually(moved.is_file, what=f"{moved} to appear")
            await cancel_export(client, other["draft_order_id"], reason="test done")
            await asyncio.wait_for(export_handle(client, other["draft_order_id"]).result(), 60)
    report = observer.report

    assert row.erp_order_id == "SO-SWEPT" and row.error_json["late_ack"] is True
    assert not (target.ack_dir / "error").exists()
    assert ledger.list_ack_rejections(connection_id=target.connection_id) == []
    assert report.partial == []
    exports = len(list(target.export_dir.glob("sales_order_*.json")))
    record(
        "long wait: late ack swept after the run closed",
        exports=exports,
        faults={"ack after the run closed": 1},
        lost=0 if row.status == "ACKED" else 1,
        duplicated=len(list(target.export_dir.glob(f"sales_order_{closed['draft_order_id'][:8]}_*.json"))) - 1,
        partial_reads=len(report.partial),
    )
