"""Two worker processes on one task queue; one is stopped with SIGTERM mid-run.

Two real ``python -m worker`` processes (what ``dropzone
worker`` / ``dropzone-worker`` run) share one task queue and a burst of
exports to one OpenSSH dropzone, answered by an ERP stand-in (AckResponder)
while an eager reader (PartialReadObserver) reads every final name.

Right after worker A is seen running activities, it gets SIGTERM, as systemd
or Kubernetes send on a deploy. It must drain: stop polling, let what it
started finish (graceful shutdown, ``worker.GRACEFUL_SHUTDOWN``) and exit 0;
worker B finishes the rest. The histories show activities that A completed
after the signal, none timed out, and every activity but the ack poll (whose
retries are its poll loop) done on its first attempt: nothing was cut off and
run again. A's log shows no cancelled activity.

Afterwards, for every export: ACKED, one ledger row, one final file with the
row's sha256, one S3 object with that sha256, no ``.tmp`` left, and the ERP
never read a partial file.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client

from dropzone.export_v1 import render_export, validate_draft
from dropzone.ledger import Ledger
from dropzone.object_store import ObjectStore
from dropzone.transports.base import is_export_name
from starter.api import export_handle, start_export, wait_for_result
from tests.chaos import scale
from tests.chaos.observer import AckResponder, PartialReadObserver
from tests.chaos.report import record
from tests.conftest import Target, make_target
from tests.fixtures.operators import WORKER_STOP_DEADLINE, WorkerProcess
from tests.helpers import eventually, make_draft, sha256_of

pytestmark = [pytest.mark.chaos, pytest.mark.asyncio(loop_scope="session")]

EXPORTS = scale.size(full=200, reduced=30)
# ~95 KB rendered: deliveries last long enough that SIGTERM finds some running.
LINES_PER_DRAFT = 400
# SIGTERM once this share of the exports has reached the dropzone: mid-run.
SIGTERM_AFTER_SHARE = 0.3
IN_FLIGHT_DEADLINE = 60.0
RUN_DEADLINE = scale.size(full=600, reduced=180)
# Requests at once when starting exports or reading histories.
CONCURRENT_REQUESTS = 20
# The ack poll retries by design: each retry is one poll.
POLLING_ACTIVITIES = {"poll_ack"}

T = TypeVar("T")


async def bounded(calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    limit = asyncio.Semaphore(CONCURRENT_REQUESTS)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with limit:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


def identity_of(worker: WorkerProcess) -> str:
    """The Temporal SDK's default identity of a worker process, as histories name it."""
    return f"{worker.process.pid}@{socket.gethostname()}"


def final_names(target: Target) -> set[str]:
    return {p.name for p in target.export_dir.iterdir() if is_export_name(p.name)}


def has_file(draft: dict[str, Any], names: set[str]) -> bool:
    prefix = f"sales_order_{draft['draft_order_id'].replace('-', '')[:8]}_"
    return any(name.startswith(prefix) for name in names)


async def wait_until_share_delivered(target: Target, worker: WorkerProcess) -> None:
    def delivered() -> bool:
        assert worker.process.returncode is None, f"worker A exited on its own:\n{worker.log_text()[-3000:]}"
        return len(final_names(target)) >= SIGTERM_AFTER_SHARE * EXPORTS

    await eventually(
        delivered, timeout=RUN_DEADLINE, every=0.05,
        what=lambda: f"{SIGTERM_AFTER_SHARE * EXPORTS} exports delivered (only {len(final_names(target))})",
    )


@dataclass
class Signalled:
    at: float  # epoch seconds
    workflow_id: str  # an activity the worker was seen running just before
    activity_id: str


async def sigterm_while_busy(
    client: Client, worker: WorkerProcess, target: Target, drafts: list[dict[str, Any]]
) -> Signalled:
    """SIGTERM ``worker`` the moment it is seen running an activity.

    Looks at a sample of the exports not delivered yet: their pending
    activities name the worker that is running them.
    """
    identity = identity_of(worker)

    async def seen_running() -> tuple[str, str] | None:
        names = final_names(target)
        waiting = [d for d in drafts if not has_file(d, names)]
        sample = random.sample(waiting, min(CONCURRENT_REQUESTS, len(waiting)))
        descriptions = await bounded(export_handle(client, d["draft_order_id"]).describe for d in sample)
        for description in descriptions:
            for pending in description.raw_description.pending_activities:
                if (
                    pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                    and pending.last_worker_identity == identity
                ):
                    return description.id, pending.activity_id
        return None

    # every=0: ask again at once, the worker is to be caught in the middle of an activity.
    workflow_id, activity_id = await eventually(
        seen_running, timeout=IN_FLIGHT_DEADLINE, every=0, what=f"worker A ({identity}) seen running an activity"
    )
    at = time.time()
    worker.process.send_signal(signal.SIGTERM)
    return Signalled(at, workflow_id, activity_id)


@dataclass
class HistoryFacts:
    """What the exports' histories say about how their activities ran."""

    timed_out: int = 0
    retried: list[str] = field(default_factory=list)
    completed_by: Counter[str] = field(default_factory=Counter)
    completed_after_signal_by: Counter[str] = field(default_factory=Counter)
    # (attempt, identity) of the completion of the activity seen running before the signal.
    seen_running_completed: tuple[int, str] | None = None


async def history_facts(client: Client, drafts: list[dict[str, Any]], signalled: Signalled) -> HistoryFacts:
    facts = HistoryFacts()
    histories = await bounded(export_handle(client, d["draft_order_id"]).fetch_history for d in drafts)
    for draft, history in zip(drafts, histories, strict=True):
        types: dict[int, str] = {}
        seen_running: int | None = None  # its scheduled event id
        attempts: dict[int, int] = {}
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled = event.activity_task_scheduled_event_attributes
                types[event.event_id] = scheduled.activity_type.name
                if history.workflow_id == signalled.workflow_id and scheduled.activity_id == signalled.activity_id:
                    seen_running = event.event_id
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                facts.timed_out += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                kind = types[started.scheduled_event_id]
                attempts[started.scheduled_event_id] = started.attempt
                if started.attempt > 1 and kind not in POLLING_ACTIVITIES:
                    facts.retried.append(
                        f"{draft['draft_order_id']}: {kind} attempt {started.attempt} after "
                        f"{started.last_failure.message!r}"
                    )
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                completed = event.activity_task_completed_event_attributes
                facts.completed_by[completed.identity] += 1
                if event.event_time.ToDatetime().timestamp() > signalled.at:
                    facts.completed_after_signal_by[completed.identity] += 1
                if completed.scheduled_event_id == seen_running:
                    facts.seen_running_completed = (attempts[seen_running], completed.identity)
    return facts


@dataclass
class Outcome:
    """What the ledger, the dropzone and the bucket hold for the exported drafts."""

    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)


def s3_keys(seaweedfs: Any, prefix: str) -> list[str]:
    client = boto3.session.Session(
        aws_access_key_id=seaweedfs.access_key, aws_secret_access_key=seaweedfs.secret_key, region_name=seaweedfs.region
    ).client("s3", endpoint_url=seaweedfs.endpoint_url, config=Config(s3={"addressing_style": "path"}))
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=seaweedfs.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]
    finally:
        client.close()


def inspect_outcome(
    ledger: Ledger, store: ObjectStore, seaweedfs: Any, target: Target, drafts: list[dict[str, Any]]
) -> Outcome:
    outcome = Outcome()
    rows = ledger.list_exports(org_id=target.org_id, limit=10 * len(drafts))
    files = {name: target.export_dir / name for name in final_names(target)}
    keys = s3_keys(seaweedfs, f"exports/{target.org_id}/")
    outcome.duplicated = (
        len(rows) - len({r.draft_order_id for r in rows})
        + len(set(files) - {r.filename for r in rows})
        + len(set(keys) - {r.export_storage_key for r in rows})
    )
    for draft in drafts:
        expected = sha256_of(render_export(validate_draft(draft)))
        mine = [r for r in rows if str(r.draft_order_id) == draft["draft_order_id"]]
        if len(mine) != 1 or mine[0].filename not in files or mine[0].status != "ACKED":
            outcome.lost += 1
            outcome.problems.append(f"{draft['draft_order_id']}: rows {[(r.filename, r.status) for r in mine]}")
            continue
        row = mine[0]
        on_disk = sha256_of(files[row.filename])
        stored = store.head(row.export_storage_key)
        if not (row.attempt == 1 and row.sha256 == expected == on_disk):
            outcome.problems.append(f"{row.filename}: attempt {row.attempt}, row {row.sha256}, file {on_disk}, expected {expected}")
        if stored is None or stored.sha256 != on_disk:
            outcome.problems.append(f"{row.export_storage_key}: object {stored}, file {on_disk}")
    return outcome


@dataclass
class Drain:
    """A worker's shutdown as its log tells it (worker.run_worker)."""

    activity_lines: list[dict[str, Any]]  # logged between "worker stopping" and "worker stopped"
    seconds: float


def drain_of(worker: WorkerProcess) -> Drain:
    records = worker.log_records()
    events = [r.get("event") for r in records]
    assert "worker stopped" in events, f"the worker never logged its drained stop:\n{worker.log_text()[-3000:]}"
    stopping, stopped = events.index("worker stopping"), events.index("worker stopped")
    assert all(r.get("logger") != "dropzone.activity" for r in records[stopped:]), "activity ran after the stop"
    lines = [r for r in records[stopping:stopped] if r.get("logger") == "dropzone.activity"]
    return Drain(lines, records[stopped]["drained_seconds"])


async def test_sigterm_drains_one_of_two_workers(
    request: pytest.FixtureRequest,
    client: Client,
    worker_process,  # type: ignore[no-untyped-def]
    ledger: Ledger,
    object_store: ObjectStore,
    seaweedfs: Any,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    target = make_target("openssh", request, ledger, tmp_path)
    queue = f"two-workers-{target.org_id.hex[:8]}"
    drafts = [make_draft(org_id=target.org_id, lines=LINES_PER_DRAFT) for _ in range(EXPORTS)]

    observer = PartialReadObserver([target.export_dir])
    with observer, AckResponder([(target.export_dir, target.ack_dir)]):
        async with worker_process(DROPZONE_TASK_QUEUE=queue) as worker_a, worker_process(
            DROPZONE_TASK_QUEUE=queue
        ) as worker_b:
            await bounded(
                partial(start_export, client, erp_connection_id=target.connection_id, draft=d, task_queue=queue)
                for d in drafts
            )
            await wait_until_share_delivered(target, worker_a)
            signalled = await sigterm_while_busy(client, worker_a, target, drafts)
            exit_code = await asyncio.wait_for(worker_a.process.wait(), WORKER_STOP_DEADLINE)
            results = await asyncio.wait_for(
                bounded(partial(wait_for_result, client, d["draft_order_id"]) for d in drafts), RUN_DEADLINE
            )
            assert worker_b.process.returncode is None, worker_b.log_text()[-3000:]
    report = observer.report
    facts = await history_facts(client, drafts, signalled)
    outcome = inspect_outcome(ledger, object_store, seaweedfs, target, drafts)
    drain = drain_of(worker_a)
    a, b = identity_of(worker_a), identity_of(worker_b)
    record(
        "two workers",
        exports=len(drafts),
        faults={"SIGTERM": 1},
        lost=outcome.lost,
        duplicated=outcome.duplicated,
        partial_reads=len(report.partial),
        activity_outcomes_logged_by_a_while_draining=len(drain.activity_lines),
        drain_seconds=drain.seconds,
        completed_by_a_after_sigterm=facts.completed_after_signal_by[a],
        completed_by_a=facts.completed_by[a],
        completed_by_b=facts.completed_by[b],
        transient_retries=facts.retried,
    )

    # A drained: exit 0, activities it had started completed after the signal, none cut off.
    assert exit_code == 0, worker_a.log_text()[-3000:]
    assert facts.seen_running_completed == (1, a), facts
    assert facts.completed_after_signal_by[a] > 0, facts
    assert [r for r in drain.activity_lines if r["event"] in ("activity cancelled", "activity failed")] == []
    # Nothing was cut off and run again. (Under a full burst a step may still be
    # retried for an ordinary transient reason, e.g. sshd's MaxStartups turning a
    # connection away: that is Temporal doing its job, not a drain failure.)
    assert facts.timed_out == 0
    assert [r for r in facts.retried if "cancel" in r.lower() or "timed out" in r.lower()] == [], facts.retried
    # B finished the rest.
    assert facts.completed_by[b] > 0 and facts.completed_after_signal_by[b] > 0
    assert [r.status for r in results] == ["ACKED"] * len(drafts)
    assert outcome.problems == [] and outcome.lost == 0 and outcome.duplicated == 0
    assert sorted(p.name for d in (target.export_dir, target.ack_dir) for p in d.rglob("*.tmp")) == []
    assert report.partial == [] and report.rewritten == []
    assert len(report.files) == len(drafts)
