"""Two executions racing on one delivery never corrupt or duplicate the final file.

The deliver activity's start-to-close timeout is cut to a few
seconds and the first execution of every delivery is slowed, so Temporal times
it out and starts attempt 2 while attempt 1 is still writing its ``.tmp`` (a
worker that stalled but never died). Everything else is real: the Temporal dev
server, an in-process worker, PostgreSQL, SeaweedFS and the dropzone server.

Attempt 1 writes its first piece, then waits until attempt 2 of the same file
is writing too before it goes on: so the two really overlap on every export,
whatever the machine's load, instead of only when timers happen to line up.
Then, taking turns across the exports, attempt 1 either *outlasts* attempt 2
(writes on slowly, long after attempt 2 published and swept its ``.tmp``) or
*sprints* (writes the rest at full speed, so both executions write and rename
onto the final name at the same time). A watcher lists the export directory
every millisecond to see both ``.tmp`` files side by side; an eager ERP
(PartialReadObserver) reads every final name as soon as it appears.

Afterwards, for every export: ACKED, one ledger row, exactly one final file
with the rendered bytes, the S3 object's sha256 equal to the file's, no
``.tmp`` left once the slow attempt 1 has ended too, and the ERP never read a
partial or changed file.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client
from temporalio.common import RetryPolicy

from dropzone.delivery import Dropzone
from dropzone.export_v1 import render_export, validate_draft
from dropzone.ledger import Ledger
from dropzone.object_store import ObjectStore
from dropzone.transports.base import is_export_name
from starter.api import export_handle, start_export, wait_for_result
from tests.chaos import scale
from tests.chaos.observer import AckResponder, BackgroundLoop, PartialReadObserver
from tests.chaos.report import record
from tests.conftest import Target, make_target
from tests.helpers import eventually, make_draft, sha256_of
from worker import Adapters
from workflows.policies import Policies

pytestmark = [pytest.mark.chaos, pytest.mark.asyncio(loop_scope="session")]

EXPORTS = scale.size(full=24, reduced=4)
# ~190 KB rendered, streamed in 32 KiB pieces: six pieces per delivery.
LINES_PER_DRAFT = 800
PIECE_BYTES = 32 * 1024
# Short enough that every slowed first execution times out; long enough that
# the unslowed second one never does, even on two busy cores. With the quick
# retry, attempt 2 starts before attempt 1's first heartbeat (5 s after its
# start), which would bring attempt 1 its cancellation: a sprinting attempt 1
# then really gets to its rename.
RACING_POLICIES = Policies(
    deliver_timeout=timedelta(seconds=3),
    deliver_retry=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=1)),
)
# Attempt 1 outlasting attempt 2: still writing well after attempt 2 published.
SLOW_PIECE_SECONDS = 0.25
MODES = ("sprints", "outlasts")
# Attempt 2: slow enough that a directory listing catches both .tmp files at once.
RACER_PIECE_SECONDS = 0.03
GATE_SECONDS = 60.0
# The server caps the heartbeat timeout at start-to-close, so the shortened
# deadline comes back as either kind.
GAVE_UP_BY_TIMEOUT = {TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE, TimeoutType.TIMEOUT_TYPE_HEARTBEAT}
RUN_DEADLINE = scale.size(full=240, reduced=120)
SETTLE_DEADLINE = 60.0
# One thread per parked first execution, plus room for everything else.
MAX_CONCURRENT_ACTIVITIES = 2 * EXPORTS + 8

_TMP = re.compile(r"(sales_order_[A-Za-z0-9_-]+\.json)\.r([0-9]+)x[a-z0-9]+\.tmp")


@dataclass
class Execution:
    started: float
    ended: float | None = None
    outcome: str | None = None


class Executions:
    """Every deliver execution as the connector saw it: when it began and ended, and how."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._runs: dict[tuple[str, int], Execution] = {}
        self._writing: set[tuple[str, int]] = set()
        self.modes: dict[str, str] = {}

    def mode_of(self, filename: str) -> str:
        """How attempt 1 of ``filename`` goes on once raced: the modes take turns."""
        with self._lock:
            return self.modes.setdefault(filename, MODES[len(self.modes) % len(MODES)])

    def writing(self, filename: str, attempt: int) -> None:
        """The execution fetched its first piece: its ``.tmp`` is open."""
        with self._lock:
            self._writing.add((filename, attempt))
            self._lock.notify_all()

    def begin(self, filename: str, attempt: int) -> None:
        with self._lock:
            self._runs[(filename, attempt)] = Execution(started=time.monotonic())
            self._lock.notify_all()

    def end(self, filename: str, attempt: int, outcome: str) -> None:
        with self._lock:
            run = self._runs[(filename, attempt)]
            run.ended, run.outcome = time.monotonic(), outcome
            self._lock.notify_all()

    def wait_for_retry(self, filename: str, timeout: float) -> bool:
        """Block until an attempt after the first is writing ``filename``'s ``.tmp`` too."""
        with self._lock:
            return self._lock.wait_for(
                lambda: any(f == filename and a > 1 for f, a in self._writing), timeout
            )

    def all_ended(self) -> bool:
        with self._lock:
            return all(run.ended is not None for run in self._runs.values())

    def overlapped(self, filename: str) -> bool:
        """Attempt 2 began while attempt 1 was still running."""
        with self._lock:
            first, second = self._runs.get((filename, 1)), self._runs.get((filename, 2))
        return (
            first is not None
            and second is not None
            and first.started < second.started
            and (first.ended is None or second.started < first.ended)
        )

    def outcomes(self, attempt: int) -> Counter[str]:
        """How the executions of ``attempt`` ended, by how attempt 1 went on once raced."""
        with self._lock:
            return Counter(
                f"{self.modes.get(f, '?')}: {run.outcome or 'running'}"
                for (f, a), run in self._runs.items()
                if a == attempt
            )


class TmpWatcher(BackgroundLoop):
    """Lists export directories every millisecond; remembers which attempts' ``.tmp``
    files of one export were there at the same moment."""

    def __init__(self, directories: list[Path]) -> None:
        super().__init__("tmp-watcher", every_seconds=0.001)
        self._directories = directories
        self.side_by_side: dict[str, set[int]] = {}

    def tick(self) -> None:
        for directory in self._directories:
            self._look(directory)

    def _look(self, directory: Path) -> None:
        attempts: dict[str, set[int]] = {}
        for name in os.listdir(directory):
            match = _TMP.fullmatch(name)
            if match:
                attempts.setdefault(match.group(1), set()).add(int(match.group(2)))
        for filename, seen in attempts.items():
            if len(seen) > 1:
                self.side_by_side.setdefault(filename, set()).update(seen)


def instrument(monkeypatch: pytest.MonkeyPatch, adapters: Adapters, executions: Executions) -> None:
    """Record every delivery execution, and slow the first one of each until its retry races it.

    Only the worker's own objects are wrapped (the bytes still come from S3
    and go to the real dropzone); the workflow sees nothing of it.
    """
    real_deliver = Dropzone.deliver
    real_iter_chunks = adapters.store.iter_chunks

    def deliver(self: Dropzone, filename: str, chunks: Any, *, attempt: int = 1, **kwargs: Any) -> Any:
        executions.begin(filename, attempt)
        try:
            result = real_deliver(self, filename, chunks, attempt=attempt, **kwargs)
        except BaseException as exc:
            executions.end(filename, attempt, type(exc).__name__)
            raise
        executions.end(filename, attempt, "already_present" if result.already_present else "published")
        return result

    def iter_chunks(key: str, chunk_size: int = PIECE_BYTES) -> Iterator[bytes]:
        filename = key.rsplit("/", 1)[-1]
        attempt = activity.info().attempt
        for number, piece in enumerate(real_iter_chunks(key, PIECE_BYTES)):
            if number == 0:
                executions.writing(filename, attempt)
            elif attempt == 1:
                if number == 1:
                    # The first piece is in the .tmp already: park until the retry races us.
                    executions.wait_for_retry(filename, GATE_SECONDS)
                if executions.mode_of(filename) == "outlasts":
                    time.sleep(SLOW_PIECE_SECONDS)
            else:
                time.sleep(RACER_PIECE_SECONDS)
            yield piece

    monkeypatch.setattr(Dropzone, "deliver", deliver)
    monkeypatch.setattr(adapters.store, "iter_chunks", iter_chunks)


def tmp_files(target: Target) -> list[str]:
    return sorted(str(p) for d in (target.export_dir, target.ack_dir) for p in d.rglob("*.tmp"))


async def settle(executions: Executions, target: Target) -> None:
    """Wait until the slow first executions have ended too and nothing is left half-written."""
    await eventually(
        lambda: executions.all_ended() and not tmp_files(target), timeout=SETTLE_DEADLINE,
        what=lambda: f"every execution ended, no .tmp left (left: {tmp_files(target)})",
    )


async def deliver_attempts(client: Client, draft_order_id: str) -> list[Any]:
    """The ActivityTaskStarted events of the run's deliver activities."""
    history = await export_handle(client, draft_order_id).fetch_history()
    deliver_ids = {
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "deliver"
    }
    return [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.scheduled_event_id in deliver_ids
    ]


@dataclass
class Outcome:
    """What the dropzone, the ledger and the bucket hold for the exported drafts."""

    rows: list[Any]
    files: dict[str, Path]
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)


def inspect_outcome(
    ledger: Ledger, store: ObjectStore, target: Target, drafts: list[dict[str, Any]]
) -> Outcome:
    rows = ledger.list_exports(org_id=target.org_id, limit=10 * len(drafts))
    files = {p.name: p for p in target.export_dir.iterdir() if is_export_name(p.name)}
    outcome = Outcome(rows=rows, files=files)
    by_draft = Counter(str(r.draft_order_id) for r in rows)
    outcome.duplicated = sum(n - 1 for n in by_draft.values() if n > 1) + len(set(files) - {r.filename for r in rows})
    for draft in drafts:
        expected = sha256_of(render_export(validate_draft(draft)))
        mine = [r for r in rows if str(r.draft_order_id) == draft["draft_order_id"]]
        if len(mine) != 1 or mine[0].filename not in files:
            outcome.lost += 1
            outcome.problems.append(f"{draft['draft_order_id']}: rows {[r.filename for r in mine]}, no single file")
            continue
        row = mine[0]
        stored = store.head(row.export_storage_key)
        if row.status != "ACKED" or row.sha256 != expected or sha256_of(files[row.filename]) != expected:
            outcome.problems.append(f"{row.filename}: status {row.status}, row {row.sha256}, expected {expected}")
        if stored is None or stored.sha256 != sha256_of(files[row.filename]):
            outcome.problems.append(f"{row.export_storage_key}: object {stored} differs from the file")
    return outcome


@pytest.mark.parametrize("kind", ["openssh", "filesystem", "asyncssh"])
async def test_racing_executions_leave_one_intact_file(
    kind: str,
    request: pytest.FixtureRequest,
    client: Client,
    run_worker,  # type: ignore[no-untyped-def]
    adapters: Adapters,
    ledger: Ledger,
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = make_target(kind, request, ledger, tmp_path)
    executions = Executions()
    instrument(monkeypatch, adapters, executions)
    drafts = [make_draft(org_id=target.org_id, lines=LINES_PER_DRAFT) for _ in range(EXPORTS)]

    observer = PartialReadObserver([target.export_dir])
    with observer, TmpWatcher([target.export_dir]) as watcher, AckResponder([(target.export_dir, target.ack_dir)]):
        async with run_worker(
            client, max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES, policies=RACING_POLICIES
        ) as queue:
            for draft in drafts:
                await start_export(
                    client, erp_connection_id=target.connection_id, draft=draft, store=object_store, task_queue=queue
                )
            results = await asyncio.wait_for(
                asyncio.gather(*(wait_for_result(client, d["draft_order_id"]) for d in drafts)), RUN_DEADLINE
            )
            await settle(executions, target)
            attempts = {d["draft_order_id"]: await deliver_attempts(client, d["draft_order_id"]) for d in drafts}
    report = observer.report
    outcome = inspect_outcome(ledger, object_store, target, drafts)
    raced = [r.filename for r in results if executions.overlapped(r.filename)]
    record(
        f"racing delivery ({kind})",
        exports=len(drafts),
        faults={"racing executions": len(raced)},
        lost=outcome.lost,
        duplicated=outcome.duplicated,
        partial_reads=len(report.partial),
        first_execution_outcomes=dict(executions.outcomes(1)),
        second_execution_outcomes=dict(executions.outcomes(2)),
    )

    assert [r.status for r in results] == ["ACKED"] * len(drafts)
    for result in results:
        started = attempts[str(result.draft_order_id)]
        # Temporal really gave up on attempt 1 (timed out) and ran another one.
        assert len(started) == 1 and started[0].attempt >= 2, started
        assert started[0].last_failure.timeout_failure_info.timeout_type in GAVE_UP_BY_TIMEOUT, started[0]
    # ...while attempt 1 was still writing: both .tmp files were there at one moment.
    assert sorted(raced) == sorted(r.filename for r in results)
    assert set(executions.modes.values()) == set(MODES[: len(drafts)])
    assert {f: {1, 2} <= seen for f, seen in watcher.side_by_side.items()} == {r.filename: True for r in results}
    # The slow first executions ended too, and nothing half-written stayed behind.
    assert executions.all_ended(), executions.outcomes(1)
    assert tmp_files(target) == []
    assert outcome.problems == [] and outcome.lost == 0 and outcome.duplicated == 0
    assert len(outcome.rows) == len(drafts) == len(outcome.files)
    assert [r.attempt for r in outcome.rows] == [1] * len(drafts)
    assert report.partial == [] and report.rewritten == []
    assert set(report.files) >= {str(target.export_dir / r.filename) for r in results}
