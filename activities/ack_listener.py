"""The activities of a connection's ack listener (``workflows/ack_listener.py``).

``scan_ack_path`` is one look into ``ack_path``: one LIST, whatever the number
of exports waiting (a second one only when a file may still be being written).
Each ack file found is handled with the per-export poll's own code
(``activities.acks.AckActivities``: parsing, size and link checks, ledger
transitions, moves and rejection records), matched only to exports of THIS
connection (``Ledger.get_export_by_filename`` is scoped to it):

* export SENT, or FAILED with ACK_TIMEOUT and no answer yet (a late answer):
  recorded, handed to the export's run with the ``hand_over_ack`` Update, and
  only then moved to ``processed/``. A run that has closed, or moved on to
  another attempt, refuses the Update: the ledger holds the answer, the file
  moves all the same (``recorded_without_run``). Temporal unreachable: the
  file stays for the next look.
* export still PENDING (an ERP faster than our ledger): left for the look after SENT.
* export already ACKED/FAILED: its recorded answer again (a worker died between
  recording and moving) is handed over again and moved; anything else is a
  duplicate and goes to ``error/``.
* no export of this connection wrote that file name: ``error/`` once it is
  older than ``SWEEP_GRACE_POLLS`` intervals, recorded, also on a connection
  where nothing else is running.

A dropzone that cannot be listed (authentication, permission, network, no
ack_path) is not an activity failure: the result says why, the listener shows
it and tries again next interval, and its exports keep waiting.

``ensure_ack_listener`` starts the listener if it is not running (the export
run calls it once per attempt, before its ack wait; a workflow can only start
child workflows, and the listener must outlive every export).

Stale temporary files: with ``sweep_stale_tmps`` (at most every
``Policies.stale_tmp_sweep_interval``), ``export_path`` is listed too and our own
``<export file>.<token>.tmp`` files older than ``stale_tmp_age`` (the workflows'
``Policies.deliver_timeout``) are removed
unless their export is still PENDING (its attempt may still be running; a
retried delivery removes those itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.acks import (
    SECOND_LOOK_SECONDS,
    SWEEP_GRACE_POLLS,
    AckActivities,
    duplicate_reason,
    is_settled,
    link_reason,
    outcome_from_record,
    unchanged_since,
)
from activities.failures import translate_errors
from activities.telemetry import ack_recorded
from dropzone import naming
from dropzone.connectors import ConnectorRegistry
from dropzone.contracts import (
    AckAccepted,
    AckHandover,
    AckOutcome,
    EnsureListenerInput,
    ErrorInfo,
    ListenerInput,
    ListenerRef,
    ScanInput,
    ScanResult,
)
from dropzone.errors import ACK_NOT_FOR_THIS_RUN as NOT_FOR_THIS_RUN
from dropzone.errors import DropzoneError, UnsafePathError
from dropzone.ledger import ConnectionRecord, ExportRecord, ExportStatus, Ledger
from dropzone.delivery import AckFile, Dropzone
from workflows import policies

log = logging.getLogger(__name__)

HAND_OVER_UPDATE = "hand_over_ack"
HAND_OVER_RPC_TIMEOUT = timedelta(seconds=30)
# One look handles at most this many export file names; the rest wait for the next.
MAX_ACKS_PER_SCAN = 2_000

# Asks the export's run to take a recorded answer: True when it did (see _hand_over).
HandOverFn = Callable[[ExportRecord, AckFile, AckOutcome], bool]


class TemporalUnreachable(Exception):
    """The run could not be asked: the ack file stays where it is for the next look."""


@dataclass
class _Tally:
    files: int = 0
    handed_over: int = 0
    recorded_without_run: int = 0
    rejected: int = 0
    stale_tmp_removed: int = 0


@dataclass
class _Look:
    """One look into one connection's ack_path."""

    dropzone: Dropzone
    connection: ConnectionRecord
    grace: float
    tally: _Tally
    hand_over: HandOverFn

    def recorded(self, record: ExportRecord, ack: AckFile, outcome: AckOutcome) -> None:
        """Just recorded in the ledger: counted as the per-export poll counts it, then handed over."""
        ack_recorded(outcome, workflow_id=record.workflow_id, draft_order_id=record.draft_order_id, sent_at=record.sent_at)
        self.counted(record, ack, outcome)

    def counted(self, record: ExportRecord, ack: AckFile, outcome: AckOutcome) -> None:
        if self.hand_over(record, ack, outcome):
            self.tally.handed_over += 1
        else:
            self.tally.recorded_without_run += 1


class AckListenerActivities:
    def __init__(
        self,
        ledger: Ledger,
        connectors: ConnectorRegistry,
        client: Client,
        acks: AckActivities,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        stale_tmp_age: timedelta = policies.DEFAULT_POLICIES.deliver_timeout,
    ) -> None:
        self._ledger = ledger
        self._connectors = connectors
        self._client = client
        self._acks = acks
        self._enabled = enabled
        self._clock = clock
        self._sleep = sleep
        # A .tmp older than the workflows' delivery timeout belongs to no running delivery.
        self._stale_tmp_age = stale_tmp_age

    # --- the listener's lifecycle ----------------------------------------------

    @activity.defn
    async def ensure_ack_listener(self, request: EnsureListenerInput) -> ListenerRef:
        workflow_id = policies.listener_id_for(request.erp_connection_id)
        if not self._enabled:
            return ListenerRef(workflow_id=workflow_id, enabled=False)
        try:
            # A read first: starts on one workflow id are serialised by the server, and
            # in a burst nearly every export finds the listener running already.
            described = await self._client.get_workflow_handle(workflow_id).describe()
            if described.status == WorkflowExecutionStatus.RUNNING:
                return ListenerRef(workflow_id=workflow_id)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise ApplicationError(
                    f"could not look up the ack listener {workflow_id}: {exc.status.name}", type="TEMPORAL_UNAVAILABLE"
                ) from None
        try:
            await self._client.start_workflow(
                policies.LISTENER_WORKFLOW_TYPE,
                ListenerInput(erp_connection_id=request.erp_connection_id),
                id=workflow_id,
                task_queue=request.task_queue,
                # Running already (the usual case): nothing happens. Closed (terminated
                # by an operator, failed): a new one starts.
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"ack listener of connection {request.erp_connection_id}",
            )
        except RPCError as exc:
            raise ApplicationError(f"could not start the ack listener {workflow_id}: {exc.status.name}", type="TEMPORAL_UNAVAILABLE") from None
        return ListenerRef(workflow_id=workflow_id)

    # --- one look into ack_path ------------------------------------------------

    @activity.defn
    async def scan_ack_path(self, request: ScanInput) -> ScanResult:
        loop = asyncio.get_running_loop()

        def hand_over(record: ExportRecord, ack: AckFile, outcome: AckOutcome) -> bool:
            future = asyncio.run_coroutine_threadsafe(self._hand_over(record, ack, outcome), loop)
            return future.result(timeout=HAND_OVER_RPC_TIMEOUT.total_seconds() + 5)

        scan = asyncio.ensure_future(asyncio.to_thread(translate_errors(self._scan), request, hand_over))
        # Heartbeats while the look runs, so a worker killed mid-look is noticed in seconds.
        while not scan.done():
            activity.heartbeat()
            await asyncio.wait({scan}, timeout=2)
        return scan.result()

    async def _hand_over(self, record: ExportRecord, ack: AckFile, outcome: AckOutcome) -> bool:
        """True when the run took the answer; False when it refused it or has closed."""
        if not record.workflow_id:
            return False
        handle = self._client.get_workflow_handle(record.workflow_id)
        try:
            accepted: AckAccepted = await handle.execute_update(
                HAND_OVER_UPDATE,
                AckHandover(ack_file=ack.name, outcome=outcome),
                result_type=AckAccepted,
                rpc_timeout=HAND_OVER_RPC_TIMEOUT,
            )
        except WorkflowUpdateFailedError:
            return False  # refused by its validator: another attempt, or closing
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                return False  # the run has closed
            raise TemporalUnreachable(f"{exc.status.name}") from None
        return accepted.export_id == record.id

    def _scan(self, request: ScanInput, hand_over: HandOverFn) -> ScanResult:
        connection = self._ledger.get_connection(request.erp_connection_id)
        connector = self._connectors.get(connection.connector_type)
        config = connector.parse_config(connection.config)
        tally = _Tally()
        listed_at = datetime.now(timezone.utc)
        # Log lines and metrics of this look (rejections, answers) carry the connection's org.
        with structlog.contextvars.bound_contextvars(org_id=str(connection.org_id), erp_connection_id=str(connection.id)):
            error = self._look_into(
                request, connection, lambda: connector.session(config), config.poll_interval_seconds, tally, hand_over
            )
        return ScanResult(
            poll_interval_seconds=config.poll_interval_seconds,
            listed_at=listed_at,
            files=tally.files,
            handed_over=tally.handed_over,
            recorded_without_run=tally.recorded_without_run,
            rejected=tally.rejected,
            stale_tmp_removed=tally.stale_tmp_removed,
            swept_tmps=request.sweep_stale_tmps and error is None,
            error=error,
        )

    def _look_into(
        self,
        request: ScanInput,
        connection: ConnectionRecord,
        open_session: Callable[[], AbstractContextManager[Dropzone]],
        interval: int,
        tally: _Tally,
        hand_over: HandOverFn,
    ) -> ErrorInfo | None:
        """Everything that needs the dropzone; its errors come back as the listener's last error."""
        try:
            self._ledger.get_active_connection(connection.id)  # deactivated: shown, not listed
            with open_session() as dropzone:
                try:
                    self._look(dropzone, connection, interval, tally, hand_over)
                except UnsafePathError as exc:
                    self._acks.record_unsafe_folder(connection, exc, None)
                    raise
                if request.sweep_stale_tmps:
                    tally.stale_tmp_removed = self._remove_stale_tmps(dropzone, connection)
        except DropzoneError as exc:
            log.warning(
                "ack listener could not look into ack_path; exports keep waiting",
                extra={"erp_connection_id": str(connection.id), "error_code": exc.code, "error": exc.message},
            )
            return ErrorInfo(code=exc.code, message=exc.message)
        return None

    def _look(
        self,
        dropzone: Dropzone,
        connection: ConnectionRecord,
        interval: int,
        tally: _Tally,
        hand_over: HandOverFn,
    ) -> None:
        look = _Look(dropzone, connection, SWEEP_GRACE_POLLS * interval, tally, hand_over)
        groups = _by_export(dropzone.list_all_acks())
        tally.files = sum(len(acks) for acks in groups.values())
        fresh: list[tuple[str, list[AckFile]]] = []
        now = self._clock()
        for filename, acks in list(groups.items())[:MAX_ACKS_PER_SCAN]:
            if all(is_settled(ack, now) for ack in acks):
                self._take(look, filename, acks)
            else:
                fresh.append((filename, acks))
        if not fresh:
            return
        # The stable-size rule for files that may still be being written: one
        # second look (one more LIST) for all of them at once.
        self._sleep(SECOND_LOOK_SECONDS)
        again = _by_export(dropzone.list_all_acks())
        now = self._clock()
        for filename, acks in fresh:
            if unchanged_since(acks, again.get(filename, []), now):
                self._take(look, filename, acks)

    def _take(self, look: _Look, filename: str, acks: list[AckFile]) -> None:
        """One export's ack files; an error leaves them for the next look, never stops the others."""
        try:
            self._take_or_raise(look, filename, acks)
        except UnsafePathError:
            raise
        except (DropzoneError, TemporalUnreachable) as exc:
            log.warning(
                "ack file left for the next look",
                extra={"erp_connection_id": str(look.connection.id), "export_filename": filename, "error": str(exc)},
            )

    def _take_or_raise(self, look: _Look, filename: str, acks: list[AckFile]) -> None:
        dropzone, connection, tally = look.dropzone, look.connection, look.tally
        owner = self._ledger.get_export_by_filename(filename, erp_connection_id=connection.id)
        now = self._clock()
        if owner is None:
            for ack in acks:
                if now - ack.mtime >= look.grace:
                    reason = f"ack file {ack.name} names {filename}, which no export in the ledger wrote for this connection"
                    self._acks.reject(dropzone, connection, ack, reason, None)
                    tally.rejected += 1
            return
        if owner.status == ExportStatus.PENDING:
            return  # arrived before SENT: taken by the first look after it
        if owner.status == ExportStatus.SENT or owner.awaits_late_ack:
            before = tally.handed_over + tally.recorded_without_run
            self._acks.take_settled(dropzone, connection, owner, acks, hand_over=look.recorded)
            tally.rejected += len(acks) - (tally.handed_over + tally.recorded_without_run - before)
            return
        # ACKED or FAILED already.
        for ack in acks:
            if not ack.is_link and self._acks.is_recorded_answer(dropzone, ack, owner):
                # Recorded, then the worker died before handing it over or moving it.
                outcome = outcome_from_record(owner)
                if outcome is not None:
                    look.counted(owner, ack, outcome)
                dropzone.move_ack(ack.name, naming.PROCESSED_DIR)
                continue
            reason = link_reason(ack) if ack.is_link else duplicate_reason(ack, owner)
            self._acks.reject(dropzone, connection, ack, reason, owner.id)
            tally.rejected += 1

    # --- stale temporary files -------------------------------------------------

    def _remove_stale_tmps(self, dropzone: Dropzone, connection: ConnectionRecord) -> int:
        def still_delivering(filename: str) -> bool:
            owner = self._ledger.get_export_by_filename(filename, erp_connection_id=connection.id)
            return owner is not None and owner.status == ExportStatus.PENDING

        older_than = self._clock() - self._stale_tmp_age.total_seconds()
        removed = dropzone.remove_stale_tmps(older_than, keep=still_delivering)
        if removed:
            log.info("removed stale temporary files", extra={"erp_connection_id": str(connection.id), "removed": removed})
        return removed


def _by_export(acks: list[AckFile]) -> dict[str, list[AckFile]]:
    groups: dict[str, list[AckFile]] = {}
    for ack in acks:
        groups.setdefault(ack.export_filename, []).append(ack)
    return groups

