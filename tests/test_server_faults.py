"""Servers that fail, end to end (issue #5, item 2).

Each test runs real exports through the Temporal dev server with a worker in
this process and takes one real server away mid-run: the OpenSSH dropzone
hangs (SIGSTOP) or restarts, SeaweedFS restarts, a private PostgreSQL
restarts, the dropzone's disk fills up, or the dropzone refuses writes. What
is checked is what the ERP and an operator see afterwards: the bytes in the
dropzone, the ledger rows, the objects in the bucket, the workflow results
and their histories.

Retry intervals and the delivery heartbeat timeout are shortened for the
test's worker (``FAST_POLICIES``, handed to ``build_worker``), so that a
reduced run stays well under a minute per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import socket
import subprocess
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
from paramiko.packet import Packetizer
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.api.history.v1 import ActivityTaskStartedEventAttributes
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client
from temporalio.common import RetryPolicy

import activities.exports as export_activities
from activities.exports import ExportActivities
from dropzone.connectors import ConnectorRegistry, DropzoneJsonV1Connector
from dropzone.contracts import ExportResult
from dropzone.crypto import ConfigCipher
from dropzone.errors import DropzoneError
from dropzone.export_v1 import render_export, validate_draft
from dropzone.ledger import ExportRecord, Ledger
from dropzone.object_store import DEFAULT_CHUNK, ObjectStore
from dropzone.transports.base import is_export_name
from dropzone.transports.sftp import SftpConnectionPool, _SendBoundSocket
from starter.api import export_handle, start_export
from tests.chaos.observer import AckResponder, PartialReadObserver
from tests.chaos.report import record
from tests.chaos.scale import size
from tests.conftest import add_connection
from tests.helpers import make_draft
from worker import Adapters, build_worker
from workflows.policies import Policies

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.chaos]

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


# ---------------------------------------------------------------------------
# worker, policies, slow source
# ---------------------------------------------------------------------------


@pytest.fixture
def fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deliveries send their first heartbeat after 5 s, longer than the shortened
    # timeout itself: heartbeat early so that only a real stall times out.
    monkeypatch.setattr(export_activities, "FIRST_HEARTBEAT_AFTER_SECONDS", 0.5)
    monkeypatch.setattr(export_activities, "HEARTBEAT_EVERY_SECONDS", 0.5)


@pytest.fixture
def sftp_pool() -> Iterator[SftpConnectionPool]:
    with SftpConnectionPool() as pool:
        yield pool


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
    description = await export_handle(client, draft_id).describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == "deliver":
            return pending
    return None


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
    deadline = time.monotonic() + within
    while (now := Resources.now(sftp_port)).threads > baseline.threads or now.fds > baseline.fds:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"leak: {now}, baseline {baseline}; new fds {sorted(set(_fd_targets()) - set(baseline_fds))}; "
                f"python threads {[t.name for t in threading.enumerate()]}"
            )
        await asyncio.sleep(0.1)
    return now


async def eventually(predicate: Callable[[], Any], *, within: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.1f} s (last: {value!r})")
        await asyncio.sleep(every)


async def results_of(client: Client, draft_ids: list[str]) -> list[ExportResult]:
    return await asyncio.wait_for(
        asyncio.gather(*(export_handle(client, d).result() for d in draft_ids)), RESULT_TIMEOUT
    )


# ---------------------------------------------------------------------------
# what the dropzone, the ledger and the bucket hold
# ---------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_sha256(draft: dict[str, Any]) -> str:
    return hashlib.sha256(render_export(validate_draft(draft))).hexdigest()


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


# ---------------------------------------------------------------------------
# a) SFTP server hangs (SIGSTOP) mid-upload
# ---------------------------------------------------------------------------

# The SDK may hold a heartbeat back for up to 0.8 x the timeout before sending
# it, so the server can hear of an upload's last progress that much after it
# happened: the stuck attempt must end within both together.
STALL_BOUND = HEARTBEAT_TIMEOUT.total_seconds() * 1.8 + MARGIN
# The stuck thread is ended by the connection's operation timeout (sftp.py).
STUCK_THREAD_BOUND = SFTP_OPERATION_TIMEOUT + MARGIN


async def upload_in_progress(export_dir: Path, *, at_least: int, within: float) -> Path:
    def grown() -> Path | None:
        for name in leftovers(export_dir):
            with contextlib.suppress(FileNotFoundError):
                if (export_dir / name).stat().st_size >= at_least:
                    return export_dir / name
        return None

    return await eventually(grown, within=within, what="an upload in progress", every=0.02)


async def heartbeat_timeout_seen(client: Client, draft_id: str, *, within: float) -> float:
    """When (monotonic) the pending deliver was first seen failed on a heartbeat timeout.

    Polled every 0.1 s, so at most that much later than the server's timeout
    (the pending activity does not say when its attempt ended).
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pending = await pending_deliver(client, draft_id)
        failure = pending.last_failure if pending is not None else None
        if failure is not None and failure.HasField("timeout_failure_info"):
            seen = time.monotonic()
            assert failure.timeout_failure_info.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT, failure
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"the stalled delivery of {draft_id} did not time out within {within:.1f} s")


@dataclass
class Stall:
    attempt_timed_out_after: float
    thread_returned_after: float


async def stall_one_upload(  # type: ignore[no-untyped-def]
    client: Client,
    queue: str,
    server,
    ledger: Ledger,
    store: ObjectStore,
    *,
    connection_id: uuid.UUID,
    draft: dict[str, Any],
    export_dir: Path,
    listener: bool,
) -> Stall:
    """Start one export, SIGSTOP the server in the middle of its upload, and
    measure when Temporal ends the attempt and when its thread comes back."""
    await start_export(client, erp_connection_id=connection_id, draft=draft, store=store, task_queue=queue)
    await upload_in_progress(export_dir, at_least=1024 * 1024, within=30)
    stalled = time.monotonic()
    server.pause(listener=listener)
    try:
        timed_out = await heartbeat_timeout_seen(client, draft["draft_order_id"], within=STALL_BOUND + 10)
        export_id = str(only_row(ledger, draft["draft_order_id"]).id)
        await eventually(
            lambda: (export_id, 1) not in deliveries_in_progress(),
            within=STUCK_THREAD_BOUND,
            what="the stalled attempt's worker thread returning",
        )
        returned = time.monotonic()
    finally:
        server.resume()
    return Stall(attempt_timed_out_after=timed_out - stalled, thread_returned_after=returned - stalled)


async def test_a_send_the_server_never_drains_ends_within_the_operation_timeout():
    """Below the SSH window: a hung server whose socket buffers are full. paramiko
    retries such a send forever; through ``_SendBoundSocket`` (what every SFTP
    connection is given) its own write loop ends with EOFError, a lost connection."""
    ours, server = socket.socketpair()
    with ours, server:
        ours.settimeout(0.1)  # what paramiko sets on the socket it is handed
        packetizer = Packetizer(_SendBoundSocket(ours, stall_seconds=1.0))
        began = time.monotonic()
        with pytest.raises(EOFError):
            packetizer.write_all(b"\0" * (64 << 20))  # far more than the buffers hold
        assert time.monotonic() - began <= 1.0 + MARGIN


@pytest.mark.parametrize("hang", ["whole_server", "session_only"])
async def test_sftp_server_hung_mid_upload_times_out_and_retry_delivers_once(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, monkeypatch, hang
):
    """SIGSTOP the sshd processes serving an upload (``session_only``), or those
    and the listener (``whole_server``: retries cannot even connect): the
    heartbeat timeout ends the stuck attempt, the stuck thread returns within
    the connection's operation timeout, the retry delivers one whole file,
    and the worker process is left with no extra thread or descriptor."""
    org_id = uuid.uuid4()
    config = openssh_server.config(
        operation_timeout_seconds=SFTP_OPERATION_TIMEOUT, connect_timeout_seconds=SFTP_CONNECT_TIMEOUT
    )
    config.pop("ack_path")
    connection_id = add_connection(ledger, org_id, config)
    export_dir = openssh_server.local_path(config["export_path"])
    adapters = adapters_for(ledger, object_store, sftp_pool)

    # The baseline is the steady state: every pool (ledger, S3, SFTP) warmed by
    # one export (into a directory of its own), idle SFTP connections closed.
    warm_org = uuid.uuid4()
    warm = make_draft(org_id=warm_org)
    warm_export_path = openssh_server.config()["export_path"]
    warm_connection = add_connection(ledger, warm_org, {**config, "export_path": warm_export_path})
    async with running_worker(client, adapters) as queue:
        await start_export(client, erp_connection_id=warm_connection, draft=warm, task_queue=queue)
        assert (await results_of(client, [warm["draft_order_id"]]))[0].status == "SENT"
    sftp_pool.discard_idle()
    await asyncio.sleep(0.5)  # paramiko's transport thread sees its close within 0.1 s
    baseline, baseline_fds = Resources.now(openssh_server.port), _fd_targets()
    baseline_transports = paramiko_transports()

    # ~5 MB at ~2.5 MB/s: two seconds of upload to stall in the middle of.
    slow_down_source(monkeypatch, object_store, piece=128 * 1024, pause=0.05)
    drafts = [make_draft(org_id=org_id, lines=20_000) for _ in range(size(full=3, reduced=1))]
    stalls: list[Stall] = []
    with PartialReadObserver([export_dir]) as observer:
        async with running_worker(client, adapters) as queue:
            for draft in drafts:
                stalls.append(
                    await stall_one_upload(
                        client, queue, openssh_server, ledger, object_store, connection_id=connection_id,
                        draft=draft, export_dir=export_dir, listener=hang == "whole_server",
                    )
                )
                assert (await results_of(client, [draft["draft_order_id"]]))[0].status == "SENT"
    report = observer.report

    tally, _ = check_delivered_once(ledger, export_dir, drafts, status="SENT")
    for draft in drafts:
        (deliver,) = await activity_attempts(client, draft["draft_order_id"], "deliver")
        assert deliver.attempt > 1, "the stalled attempt must have been retried"
    for stall in stalls:
        assert stall.attempt_timed_out_after <= STALL_BOUND, stall
        assert stall.thread_returned_after <= STUCK_THREAD_BOUND, stall

    # No leak: the stuck connection was closed, its transport thread ended, and
    # the process holds no more threads or descriptors than before the stall.
    sftp_pool.discard_idle()
    await eventually(
        lambda: paramiko_transports() <= baseline_transports,
        within=5,
        what="the SFTP connections' transport threads ending",
    )
    assert tcp_connections_to(openssh_server.port) == 0
    await back_to(baseline, baseline_fds, sftp_port=openssh_server.port, within=10)
    assert report.partial == [] and report.rewritten == []
    record(
        f"sftp server hung mid-upload ({hang.replace('_', ' ')})",
        exports=len(drafts),
        faults={"sftp_sigstop": len(stalls)},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
        stall_to_attempt_timeout_s=round(max(s.attempt_timed_out_after for s in stalls), 2),
        stuck_thread_returned_after_s=round(max(s.thread_returned_after for s in stalls), 2),
    )


# A server that dies or hangs during a login is not a wrong password: paramiko
# reports all three as "authentication failed", and only a refusal may end the
# export as AUTH_FAILED (found by the restart test below: a restart that met a
# login failed the export for good).
LOGIN_TIMEOUT = 2.0


@pytest.mark.parametrize("fault", ["drop", "hang"])
async def test_sftp_login_cut_off_or_unanswered_is_retried_not_auth_failed(
    client: Client, asyncssh_sftp_server, ledger, object_store, sftp_pool, fast_heartbeats, fault
):
    org_id = uuid.uuid4()
    config = asyncssh_sftp_server.config(
        operation_timeout_seconds=LOGIN_TIMEOUT, connect_timeout_seconds=LOGIN_TIMEOUT
    )
    config.pop("ack_path")
    connection_id = add_connection(ledger, org_id, config)
    export_dir = asyncssh_sftp_server.local_path(config["export_path"])
    draft = make_draft(org_id=org_id)
    with PartialReadObserver([export_dir]) as observer:
        async with running_worker(client, adapters_for(ledger, object_store, sftp_pool)) as queue:
            asyncssh_sftp_server.fail_logins(fault)
            try:
                await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
                failures = await failing_deliveries(client, draft["draft_order_id"], attempts=3, within=30)
            finally:
                asyncssh_sftp_server.fail_logins(None)
            (result,) = await results_of(client, [draft["draft_order_id"]])
    report = observer.report

    assert result.status == "SENT"
    assert {f.last_failure.application_failure_info.type for f in failures} == {"DROPZONE_UNAVAILABLE"}
    # Failure messages travel encrypted (the payload codec): read them as an operator with the key does.
    messages = [str(await client.data_converter.decode_failure(f.last_failure)) for f in failures]
    assert all("during authentication" in message for message in messages), messages
    tally, _ = check_delivered_once(ledger, export_dir, [draft], status="SENT")
    assert report.partial == [] and report.rewritten == []
    record(
        f"sftp login {'cut off' if fault == 'drop' else 'unanswered'}",
        exports=1,
        faults={f"login_{fault}": len(failures)},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
    )


# ---------------------------------------------------------------------------
# b, c, d) a server restarted while several exports are in flight
# ---------------------------------------------------------------------------


@dataclass
class Outage:
    """Take a server away when the first export file lands, bring it back ``down_for`` later."""

    kind: str
    stop: Callable[[], None]
    start: Callable[[], None]
    down_for: float
    happened: int = 0

    async def inject(self, export_dir: Path, *, within: float) -> None:
        await eventually(lambda: final_files(export_dir), within=within, what="a first delivered file", every=0.02)
        # Blocking calls (pg_ctl, weed): off the event loop the worker runs on.
        await asyncio.to_thread(self.stop)
        self.happened += 1
        try:
            await asyncio.sleep(self.down_for)
        finally:
            await asyncio.to_thread(self.start)


async def start_staggered(
    client: Client, queue: str, connection_id: uuid.UUID, drafts: list[dict[str, Any]], every: float
) -> None:
    """Start the exports one after another, so that the outage meets each at another step."""
    for draft in drafts:
        await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
        await asyncio.sleep(every)


async def exports_across(
    outage: Outage,
    client: Client,
    queue: str,
    *,
    connection_id: uuid.UUID,
    drafts: list[dict[str, Any]],
    export_dir: Path,
) -> list[ExportResult]:
    starting = asyncio.create_task(start_staggered(client, queue, connection_id, drafts, every=0.2))
    try:
        await outage.inject(export_dir, within=60)
    finally:
        await starting
    return await results_of(client, [d["draft_order_id"] for d in drafts])


@dataclass
class AckedDropzone:
    """An export directory the test can see, answered by an ERP that acks everything."""

    connection_id: uuid.UUID
    export_dir: Path
    ack_dir: Path


def filesystem_dropzone(ledger: Ledger, org_id: uuid.UUID, base: Path) -> AckedDropzone:
    export_dir, ack_dir = base / "export", base / "ack"
    export_dir.mkdir(parents=True)
    ack_dir.mkdir()
    config = {
        "mode": "filesystem",
        "export_path": str(export_dir),
        "ack_path": str(ack_dir),
        "poll_interval_seconds": 1,
    }
    return AckedDropzone(add_connection(ledger, org_id, config), export_dir, ack_dir)


async def run_through_outage(
    client: Client, adapters: Adapters, outage: Outage, dropzone: AckedDropzone, drafts: list[dict[str, Any]]
) -> tuple[list[ExportResult], Any]:
    erp = AckResponder([(dropzone.export_dir, dropzone.ack_dir)])
    with PartialReadObserver([dropzone.export_dir]) as observer, erp:
        async with running_worker(client, adapters) as queue:
            results = await exports_across(
                outage,
                client,
                queue,
                connection_id=dropzone.connection_id,
                drafts=drafts,
                export_dir=dropzone.export_dir,
            )
    return results, observer.report


async def record_outage(
    name: str, client: Client, outage: Outage, drafts: list[dict[str, Any]], tally: Tally, report: Any
) -> None:
    assert outage.happened >= 1
    assert report.partial == [] and report.rewritten == []
    record(
        name,
        exports=len(drafts),
        faults={outage.kind: outage.happened},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
        exports_with_retried_steps=await retried(client, [d["draft_order_id"] for d in drafts]),
        down_seconds=outage.down_for,
    )


async def test_sftp_server_restarted_with_exports_in_flight_delivers_each_once(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, monkeypatch
):
    org_id = uuid.uuid4()
    config = openssh_server.config(
        operation_timeout_seconds=SFTP_OPERATION_TIMEOUT, connect_timeout_seconds=SFTP_CONNECT_TIMEOUT,
        poll_interval_seconds=1,
    )
    dropzone = AckedDropzone(
        add_connection(ledger, org_id, config),
        openssh_server.local_path(config["export_path"]),
        openssh_server.local_path(config["ack_path"]),
    )
    # ~250 KB each at ~2.5 MB/s: uploads overlap the restart.
    slow_down_source(monkeypatch, object_store, piece=32 * 1024, pause=0.0125)
    drafts = [make_draft(org_id=org_id, lines=1_000) for _ in range(size(full=30, reduced=6))]
    outage = Outage("sftp_restart", openssh_server.stop, openssh_server.start, down_for=1.0)
    try:
        results, report = await run_through_outage(
            client, adapters_for(ledger, object_store, sftp_pool), outage, dropzone, drafts
        )
    finally:
        openssh_server.start()  # never leave the session's server down
    assert [r.status for r in results] == ["ACKED"] * len(drafts)
    tally, _ = check_delivered_once(ledger, dropzone.export_dir, drafts, status="ACKED")
    await record_outage("sftp server restarted mid-run", client, outage, drafts, tally, report)


async def test_object_storage_restarted_with_exports_in_flight_delivers_each_once(
    client: Client, seaweedfs, ledger, object_store, sftp_pool, fast_heartbeats, tmp_path
):
    org_id = uuid.uuid4()
    dropzone = filesystem_dropzone(ledger, org_id, tmp_path / "dropzone")
    drafts = [make_draft(org_id=org_id, lines=20) for _ in range(size(full=30, reduced=8))]
    outage = Outage("s3_restart", seaweedfs.stop, seaweedfs.start, down_for=1.0)
    try:
        results, report = await run_through_outage(
            client, adapters_for(ledger, object_store, sftp_pool), outage, dropzone, drafts
        )
    finally:
        seaweedfs.start()
        await storage_answering(object_store)  # the next test must not meet its restart
    assert [r.status for r in results] == ["ACKED"] * len(drafts)
    tally, rows = check_delivered_once(ledger, dropzone.export_dir, drafts, status="ACKED")
    for row in rows:  # one object per attempt, holding the delivered bytes
        head = object_store.head(row.export_storage_key)
        assert head is not None and head.sha256 == row.sha256 and head.size == row.size_bytes
        body = b"".join(object_store.iter_chunks(row.export_storage_key))
        assert hashlib.sha256(body).hexdigest() == row.sha256
    await record_outage("object storage restarted mid-run", client, outage, drafts, tally, report)


async def storage_answering(store: ObjectStore, within: float = 60) -> None:
    """SeaweedFS answers InternalError for a while after a restart: wait it out."""
    key = f"exports/health/{uuid.uuid4().hex}"
    body = b"ok"
    sha = hashlib.sha256(body).hexdigest()

    def round_trip() -> bool:
        try:
            store.put(key, body, sha256=sha, size=len(body))
            return b"".join(store.iter_chunks(key)) == body
        except DropzoneError:
            return False

    deadline = time.monotonic() + within
    while not await asyncio.to_thread(round_trip):
        assert time.monotonic() < deadline, "object storage did not answer after its restart"
        await asyncio.sleep(0.5)
    await asyncio.to_thread(store.delete, key)


async def test_database_restarted_with_exports_in_flight_delivers_each_once(
    client: Client, private_postgres, config_cipher: ConfigCipher, object_store, sftp_pool, fast_heartbeats, tmp_path
):
    """A PostgreSQL of the test's own (the session's server stays up for the others)."""
    ledger = Ledger.connect(private_postgres.url, config_cipher)
    try:
        org_id = uuid.uuid4()
        dropzone = filesystem_dropzone(ledger, org_id, tmp_path / "dropzone")
        drafts = [make_draft(org_id=org_id, lines=20) for _ in range(size(full=30, reduced=8))]
        outage = Outage("postgres_restart", private_postgres.stop, private_postgres.start, down_for=2.0)
        results, report = await run_through_outage(
            client, adapters_for(ledger, object_store, sftp_pool), outage, dropzone, drafts
        )
        assert [r.status for r in results] == ["ACKED"] * len(drafts)
        tally, rows = check_delivered_once(ledger, dropzone.export_dir, drafts, status="ACKED")
        assert all(row.acked_at is not None and row.erp_order_id for row in rows)
        await record_outage("database restarted mid-run", client, outage, drafts, tally, report)
    finally:
        ledger.dispose()


# ---------------------------------------------------------------------------
# e, f) the dropzone's disk is full; the dropzone refuses writes
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(directory: Path, options: str) -> Iterator[Path]:
    """A real, small file system mounted on ``directory`` (tests run as root)."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=False, capture_output=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs ({mounted.stderr.decode().strip()}): run the tests as root, as CI does")
    try:
        yield directory
    finally:
        # Lazily if sshd still holds a file there: it lets go when it notices the client is gone.
        if subprocess.run(["umount", str(directory)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def fill_up(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@dataclass
class Dropzone:
    connection_id: uuid.UUID
    export_dir: Path


def dropzone_of(  # type: ignore[no-untyped-def]
    kind: str, ledger: Ledger, org_id: uuid.UUID, openssh_server, tmp_path: Path
) -> Dropzone:
    """An export directory without ack path, on the filesystem or behind OpenSSH (as its non-root user)."""
    if kind == "filesystem":
        export_dir = tmp_path / "export"
        export_dir.mkdir()
        config: dict[str, Any] = {"mode": "filesystem", "export_path": str(export_dir)}
    else:
        config = openssh_server.config(
            operation_timeout_seconds=SFTP_OPERATION_TIMEOUT, connect_timeout_seconds=SFTP_CONNECT_TIMEOUT
        )
        config.pop("ack_path")
        export_dir = openssh_server.local_path(config["export_path"])
    return Dropzone(add_connection(ledger, org_id, config), export_dir)


async def failing_deliveries(
    client: Client, draft_id: str, *, attempts: int, within: float
) -> list[PendingActivityInfo]:
    """Snapshots of the pending deliver until it is on its ``attempts``-th execution."""
    seen: list[PendingActivityInfo] = []
    deadline = time.monotonic() + within
    while not seen or seen[-1].attempt < attempts:
        assert time.monotonic() < deadline, f"delivery of {draft_id} not retried {attempts} times: {seen[-1:]}"
        pending = await pending_deliver(client, draft_id)
        failed_before = pending is not None and pending.HasField("last_failure")
        if failed_before and (not seen or pending.attempt != seen[-1].attempt):  # type: ignore[union-attr]
            seen.append(pending)  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
    return seen


@pytest.mark.parametrize("kind", ["filesystem", "openssh"])
async def test_full_dropzone_is_retried_with_backoff_and_delivered_once_space_is_back(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, tmp_path, kind
):
    org_id = uuid.uuid4()
    dropzone = dropzone_of(kind, ledger, org_id, openssh_server, tmp_path)
    draft = make_draft(org_id=org_id, lines=200)
    with tmpfs(dropzone.export_dir, "size=256k,mode=0777"), PartialReadObserver([dropzone.export_dir]) as observer:
        filler = fill_up(dropzone.export_dir)
        async with running_worker(client, adapters_for(ledger, object_store, sftp_pool)) as queue:
            await start_export(client, erp_connection_id=dropzone.connection_id, draft=draft, task_queue=queue)
            failures = await failing_deliveries(client, draft["draft_order_id"], attempts=4, within=30)
            while_full = only_row(ledger, draft["draft_order_id"])
            filler.unlink()
            (result,) = await results_of(client, [draft["draft_order_id"]])
        tally, _ = check_delivered_once(ledger, dropzone.export_dir, [draft], status="SENT")
    report = observer.report

    assert result.status == "SENT"
    assert while_full.status == "PENDING" and while_full.error_json is None
    codes = {f.last_failure.application_failure_info.type for f in failures}
    assert codes == {"DROPZONE_UNAVAILABLE"}, [f.last_failure for f in failures]
    # Backoff: the server's interval before each next attempt grows (0.5 s, 1 s, 2 s).
    intervals = [f.current_retry_interval.ToTimedelta() for f in failures]
    assert intervals == sorted(intervals) and intervals[-1] > intervals[0], intervals
    (deliver,) = await activity_attempts(client, draft["draft_order_id"], "deliver")
    assert deliver.attempt > len(failures)
    assert deliver.last_failure.application_failure_info.type == "DROPZONE_UNAVAILABLE"
    assert report.partial == [] and report.rewritten == []
    record(
        f"dropzone disk full ({kind})",
        exports=1,
        faults={"disk_full": 1},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
        deliver_attempts=deliver.attempt,
        retry_intervals_s=[round(i.total_seconds(), 2) for i in intervals],
        message=str(await client.data_converter.decode_failure(failures[0].last_failure)),
    )


@contextlib.contextmanager
def unwritable(kind: str, export_dir: Path) -> Iterator[None]:
    """The export directory refuses writes: read-only for the SFTP user (not root,
    who may write anywhere), or a read-only file system for the root worker."""
    if kind == "filesystem":
        with tmpfs(export_dir, "ro,size=64k"):
            yield
        return
    os.chown(export_dir, 0, 0)
    export_dir.chmod(0o555)
    yield


@pytest.mark.parametrize("kind", ["filesystem", "openssh"])
async def test_permission_denied_fails_at_once_with_a_clear_code(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, tmp_path, kind
):
    org_id = uuid.uuid4()
    dropzone = dropzone_of(kind, ledger, org_id, openssh_server, tmp_path)
    draft = make_draft(org_id=org_id)
    with unwritable(kind, dropzone.export_dir):
        async with running_worker(client, adapters_for(ledger, object_store, sftp_pool)) as queue:
            await start_export(client, erp_connection_id=dropzone.connection_id, draft=draft, task_queue=queue)
            (result,) = await results_of(client, [draft["draft_order_id"]])
        left_behind = os.listdir(dropzone.export_dir)

    # The run ends (after the shortened wait for an operator's retry) as FAILED.
    assert result.status == "FAILED" and result.error is not None
    assert result.error.code == "PERMISSION_DENIED"
    assert str(dropzone.export_dir) in result.error.message
    (deliver,) = await activity_attempts(client, draft["draft_order_id"], "deliver")
    assert deliver.attempt == 1, "a permanent error must not be retried"
    row = only_row(ledger, draft["draft_order_id"])
    assert row.status == "FAILED" and row.error_json["code"] == "PERMISSION_DENIED"
    assert left_behind == []
    record(
        f"dropzone permission denied ({kind})",
        exports=1,
        faults={"permission_denied": 1},
        lost=0 if row.status == "FAILED" else 1,  # failed visibly, with its code: not lost
        duplicated=len(left_behind),
        partial_reads=0,
        deliver_attempts=deliver.attempt,
    )
