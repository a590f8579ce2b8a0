"""What the server-fault tests share: a worker with shortened policies, a slow object
source, and what happened afterwards (histories, pending activities, threads,
descriptors, the dropzone, the ledger)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import paramiko
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import ActivityTaskStartedEventAttributes
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client
from temporalio.common import RetryPolicy

from activities.exports import ExportActivities
from dropzone.connectors import ConnectorRegistry, DropzoneJsonV1Connector
from dropzone.contracts import ExportResult
from dropzone.export_v1 import render_export, validate_draft
from dropzone.ledger import ExportRecord, Ledger
from dropzone.object_store import DEFAULT_CHUNK, ObjectStore
from dropzone.transports.base import is_export_name
from dropzone.transports.sftp import SftpConnectionPool
from starter.api import export_handle
from tests.helpers import eventually, pending_activity, sha256_of
from worker import Adapters, build_worker
from workflows.policies import Policies


# Shortened for this process's worker: a stalled upload is noticed after 4 s
# instead of 30, and transient failures are retried after 0.5, 1, 2, 2 … s.
HEARTBEAT_TIMEOUT = timedelta(seconds=4)
FAST_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=2),
)
FAST_POLICIES = Policies(
    deliver_heartbeat_timeout=HEARTBEAT_TIMEOUT,
    deliver_retry=FAST_RETRY,
    ledger_retry=FAST_RETRY,
    # A FAILED export closes its run after a second instead of waiting 30 days
    # for an operator: the permanent-failure test reads the run's result.
    retry_signal_window=timedelta(seconds=1),
)
# The SFTP connection's own bound on one request (connection config). Longer
# than the heartbeat bound below, so that the hung-server test shows Temporal's
# heartbeat timeout ending the attempt, and then the thread ending on its own.
SFTP_OPERATION_TIMEOUT = 12.0
SFTP_CONNECT_TIMEOUT = 3.0
# Slack for scheduling on a loaded 2-core machine, added to every explicit bound.
MARGIN = 3.0
RESULT_TIMEOUT = 120.0


def adapters_for(ledger: Ledger, store: ObjectStore, pool: SftpConnectionPool) -> Adapters:
    """The worker's adapters, with an SFTP pool the test can see into."""
    registry = ConnectorRegistry()
    registry.register(DropzoneJsonV1Connector(sftp_pool=pool))
    return Adapters(ledger=ledger, store=store, connectors=registry)


@asynccontextmanager
async def running_worker(client: Client, adapters: Adapters, *, slots: int = 16) -> AsyncIterator[str]:
    """A real worker (FAST_POLICIES) on a fresh task queue; its threads are joined on the way out."""
    task_queue = f"faults-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="activity") as executor:
        worker = build_worker(
            client, adapters, task_queue=task_queue, executor=executor, max_concurrent_activities=slots,
            policies=FAST_POLICIES,
        )
        async with worker:
            yield task_queue


class SlowSource:
    """The object store's chunks dealt out slowly, so that an upload lasts long
    enough to be interrupted (the stored object and its bytes are untouched)."""

    def __init__(self, iter_chunks: Callable[..., Iterator[bytes]], *, piece: int, pause: float) -> None:
        self._iter_chunks = iter_chunks
        self._piece = piece
        self._pause = pause

    def __call__(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        for block in self._iter_chunks(key, chunk_size):
            for start in range(0, len(block), self._piece):
                yield block[start : start + self._piece]
                time.sleep(self._pause)


def slow_down_source(monkeypatch: pytest.MonkeyPatch, store: ObjectStore, *, piece: int, pause: float) -> None:
    monkeypatch.setattr(store, "iter_chunks", SlowSource(store.iter_chunks, piece=piece, pause=pause))


# ---------------------------------------------------------------------------
# what happened: histories, pending activities, threads, descriptors
# ---------------------------------------------------------------------------


async def activity_attempts(
    client: Client, draft_id: str, activity: str | None = None
) -> list[ActivityTaskStartedEventAttributes]:
    """The started event of every activity (of one type, if given) in the run's
    history; ``attempt`` is how many executions it took, ``last_failure`` why
    the one before the last failed."""
    history = await export_handle(client, draft_id).fetch_history()
    scheduled = {
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and activity in (None, e.activity_task_scheduled_event_attributes.activity_type.name)
    }
    return [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id in scheduled
    ]


async def retried(client: Client, draft_ids: list[str]) -> int:
    """How many of these runs needed more than one execution of some activity
    (ack polls excluded: retrying them is how they wait)."""
    count = 0
    for draft_id in draft_ids:
        attempts = await activity_attempts(client, draft_id)
        polls = {a.scheduled_event_id for a in await activity_attempts(client, draft_id, "poll_ack")}
        count += any(a.attempt > 1 for a in attempts if a.scheduled_event_id not in polls)
    return count


async def pending_deliver(client: Client, draft_id: str) -> PendingActivityInfo | None:
    return await pending_activity(client, draft_id, "deliver")


_DELIVER_CODE = ExportActivities.deliver.__wrapped__.__code__  # type: ignore[attr-defined]


def deliveries_in_progress() -> set[tuple[str, int | None]]:
    """(export id, activity attempt) of every deliver some thread of this process is inside.

    Read from the threads' stacks, so a thread still blocked on a hung server
    counts even though Temporal gave up on its attempt long ago.
    """
    found: set[tuple[str, int | None]] = set()
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code is _DELIVER_CODE:
                local = frame.f_locals
                found.add((str(getattr(local.get("ref"), "export_id", "?")), local.get("attempt")))
            frame = frame.f_back
    return found


def _fd_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(targets)


def paramiko_transports() -> int:
    """Live SSH connections of this process (each is a paramiko thread)."""
    return sum(isinstance(t, paramiko.Transport) for t in threading.enumerate())


def closing_transports() -> int:
    """SSH connections closed whose paramiko thread has not ended yet."""
    return sum(isinstance(t, paramiko.Transport) and not t.is_active() for t in threading.enumerate())


def _our_tcp_peer_ports() -> dict[str, int]:
    """Socket inode → remote port, for this process's TCP connections on this machine."""
    ours = {t[len("socket:[") : -1] for t in _fd_targets() if t.startswith("socket:[")}
    peers = {}
    with open("/proc/self/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[9] in ours:
                peers[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    return peers


def tcp_connections_to(port: int) -> int:
    """Open TCP connections of this process to ``port`` on this machine."""
    return sum(peer == port for peer in _our_tcp_peer_ports().values())


def pooled_connections_elsewhere(sftp_port: int) -> int:
    """TCP connections to the other servers (S3, Temporal, PostgreSQL): their
    clients' pools grow and shrink with the load, which is not a leak."""
    return sum(peer != sftp_port for peer in _our_tcp_peer_ports().values())


@dataclass(frozen=True)
class Resources:
    """What a leak would show: OS threads and open descriptors of this process."""

    threads: int
    fds: int  # every descriptor except connections to the other servers' pools

    @classmethod
    def now(cls, sftp_port: int) -> Resources:
        fds = len(os.listdir("/proc/self/fd")) - pooled_connections_elsewhere(sftp_port)
        return cls(threads=len(os.listdir("/proc/self/task")), fds=fds)


async def back_to(baseline: Resources, baseline_fds: list[str], *, sftp_port: int, within: float) -> Resources:
    """Wait until the process holds no more threads or descriptors than at ``baseline``.

    Not more, rather than exactly as many: the Temporal core's runtime ends
    idle threads of its own in between.
    """
    def no_more() -> Resources | None:
        now = Resources.now(sftp_port)
        return now if now.threads <= baseline.threads and now.fds <= baseline.fds else None

    return await eventually(
        no_more, timeout=within,
        what=lambda: (
            f"no leak: {Resources.now(sftp_port)}, baseline {baseline}; "
            f"new fds {sorted(set(_fd_targets()) - set(baseline_fds))}; "
            f"python threads {[t.name for t in threading.enumerate()]}"
        ),
    )


async def results_of(client: Client, draft_ids: list[str]) -> list[ExportResult]:
    return await asyncio.wait_for(
        asyncio.gather(*(export_handle(client, d).result() for d in draft_ids)), RESULT_TIMEOUT
    )


# ---------------------------------------------------------------------------
# what the dropzone, the ledger and the bucket hold
# ---------------------------------------------------------------------------

def expected_sha256(draft: dict[str, Any]) -> str:
    return sha256_of(render_export(validate_draft(draft)))


def leftovers(export_dir: Path) -> list[str]:
    return sorted(name for name in os.listdir(export_dir) if name.endswith(".tmp"))


def final_files(export_dir: Path) -> list[str]:
    return sorted(name for name in os.listdir(export_dir) if is_export_name(name))


def only_row(ledger: Ledger, draft_id: str) -> ExportRecord:
    rows = ledger.list_exports(draft_order_id=uuid.UUID(draft_id))
    assert len(rows) == 1, rows
    return rows[0]


@dataclass
class Tally:
    """Per-run figures, counted from the dropzone and the ledger."""

    lost: int
    duplicated: int


def check_delivered_once(
    ledger: Ledger, export_dir: Path, drafts: list[dict[str, Any]], *, status: str
) -> tuple[Tally, list[ExportRecord]]:
    """Every draft has one ledger row in ``status`` and one final file with its bytes."""
    finals = set(final_files(export_dir))
    rows: list[ExportRecord] = []
    lost = duplicated = 0
    for draft in drafts:
        attempts = ledger.list_exports(draft_order_id=uuid.UUID(draft["draft_order_id"]))
        duplicated += max(0, len(attempts) - 1)
        lost += not any(r.filename in finals for r in attempts)
        rows.extend(attempts)
    duplicated += max(0, len(finals) - len(drafts))
    tally = Tally(lost=lost, duplicated=duplicated)
    assert tally == Tally(lost=0, duplicated=0), f"{tally}: files {sorted(finals)}"
    for draft, row in zip(drafts, rows, strict=True):
        assert row.status == status, f"{row.filename}: {row.status} {row.error_json}"
        assert row.attempt == 1 and row.sent_at is not None
        assert row.sha256 == expected_sha256(draft) == sha256_of(export_dir / row.filename)
    assert leftovers(export_dir) == []
    return tally, rows


async def failing_deliveries(
    client: Client, draft_id: str, *, attempts: int, within: float
) -> list[PendingActivityInfo]:
    """Snapshots of the pending deliver until it is on its ``attempts``-th execution."""
    seen: list[PendingActivityInfo] = []

    async def retried_enough() -> list[PendingActivityInfo] | None:
        pending = await pending_deliver(client, draft_id)
        failed_before = pending is not None and pending.HasField("last_failure")
        if failed_before and (not seen or pending.attempt != seen[-1].attempt):  # type: ignore[union-attr]
            seen.append(pending)  # type: ignore[arg-type]
        return seen if seen and seen[-1].attempt >= attempts else None

    return await eventually(
        retried_enough, timeout=within, what=lambda: f"delivery of {draft_id} retried {attempts} times: {seen[-1:]}"
    )
