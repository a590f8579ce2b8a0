"""The ack poll: one look into ``ack_path`` per activity attempt.

``poll_ack`` raises ``AckNotYetAvailable`` (retryable) when no ack is there, so
Temporal's retry schedule is the polling loop and waiting costs no history.
Each step is safe to repeat: the ledger transition is conditional and the ack
file is moved only after the ledger has recorded it, so a crash between the two
re-reads the same file and records nothing twice.

Late answers: an export FAILED with ``ACK_TIMEOUT`` still takes the ERP's
``ack_`` (→ ACKED, ``error_json`` marked ``"late_ack": true``) or ``error_``
(→ stays FAILED with the ERP's error) through the ledger's late transitions.
The workflow keeps polling for it with this same activity while it waits for
a retry signal (the poll answers ACK_PENDING while such a row has no answer);
after that, the sweep records it. The ERP has taken or refused the order by
then, and the ledger must say which before anyone retries.

Every ack file that is refused goes to ``<ack_path>/error/`` AND into the
``erp_ack_rejection`` table (``dropzone acks rejected``), so an operator sees
it without browsing the dropzone:

* malformed (``dropzone.acks.parse_ack`` says why), oversized (judged from the
  file size, without reading it), a symbolic link (never followed or read), or
  both ``ack_`` and ``error_`` for one export (the ERP contradicts itself;
  neither is trusted);
* ``processed/`` or ``error/`` being a link is recorded once (``moved_to`` is the
  link itself) and fails the poll with ``UNSAFE_PATH``: nothing is read or moved;
* found by the sweep: while polling one export, the other ack files in the
  same directory are looked at (at most once per poll interval per connection
  and worker), and those for a file no export of this connection wrote (another
  organisation's file name included: it is never looked up), or for an export
  that finished long ago, are moved once they are older than
  ``SWEEP_GRACE_POLLS`` poll intervals — so an ack for an export being opened
  right now, or one its own poll is about to take, is never stolen. Old files
  for an export that awaits a late answer (ACK_TIMEOUT) are not refused: the
  sweep records them as that export's own poll would, and moves them to
  ``processed/``.

An ack still being written is left for the next poll: a file is only read when
its mtime is ``SETTLE_SECONDS`` old, or when a second look ``SECOND_LOOK_SECONDS``
later sees the same size and mtime (the ERP's clock may differ from ours).

The connection's ack listener (``activities/ack_listener.py``) takes acks with
the same code (``take_settled``, ``reject``, ``is_recorded_answer``): it hands
each recorded answer to the export's run (``hand_over``) before the file moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from uuid import UUID

from temporalio import activity

from activities.failures import translate_errors
from activities.telemetry import ack_rejected
from dropzone import naming
from dropzone.acks import MAX_ACK_BYTES, Ack, ErrorAck, parse_ack
from dropzone.connectors import ConnectorRegistry
from dropzone.contracts import AckOutcome, ErrorInfo, ExportRef
from dropzone.errors import AckNotYetAvailable, DropzoneError, MalformedAckError, UnsafePathError
from dropzone.ledger import ConnectionRecord, ExportRecord, ExportStatus, Ledger
from dropzone.ledger.models import LATE_ACK_KEY
from dropzone.delivery import AckFile, Dropzone

log = logging.getLogger(__name__)

SETTLE_SECONDS = 2.0  # SFTP reports whole seconds: 1 s could be 0.01 s
SECOND_LOOK_SECONDS = 0.5
SWEEP_GRACE_POLLS = 10


# Called with the export, its ack file and the recorded answer after the ledger
# has it and before the file moves; raising leaves the file for the next look.
HandOver = Callable[[ExportRecord, AckFile, AckOutcome], None]


def is_settled(ack: AckFile, now: float) -> bool:
    """Old enough (by its mtime) that the ERP has finished writing it."""
    return now - ack.mtime >= SETTLE_SECONDS and ack.size > 0


def unchanged_since(before: list[AckFile], after: list[AckFile], now: float) -> bool:
    """The second look: same names, sizes and mtimes (an empty file only once it is old)."""
    if {(a.name, a.size, a.mtime) for a in before} != {(a.name, a.size, a.mtime) for a in after}:
        return False
    return all(a.size > 0 or now - a.mtime >= SETTLE_SECONDS for a in after)


def link_reason(ack: AckFile) -> str:
    return f"ack file {ack.name} is a symbolic link; links are never followed or read (the ERP must write a file)"


def duplicate_reason(ack: AckFile, owner: ExportRecord) -> str:
    """Why an ack for an export that has its answer already is refused."""
    return (
        f"ack file {ack.name} arrived for export {owner.id}, which is already {owner.status}"
        + (f" ({owner.error_json.get('code')})" if owner.status == "FAILED" and owner.error_json else "")
        + "; check the order in the ERP"
    )


def outcome_from_record(record: ExportRecord) -> AckOutcome | None:
    """The ERP's recorded answer, or None while there is none (SENT, or ACK_TIMEOUT unanswered)."""
    late = record.answered_late
    if record.status == ExportStatus.ACKED:
        return AckOutcome(export_id=record.id, status="ACKED", erp_order_id=record.erp_order_id, late=late)
    if record.status == ExportStatus.FAILED and record.error_json and not record.awaits_late_ack:
        error = ErrorInfo(
            code=str(record.error_json.get("code", "ERP_REJECTED")),
            message=str(record.error_json.get("message", "")),
        )
        return AckOutcome(export_id=record.id, status="FAILED", error=error, late=late)
    return None


class AckActivities:
    def __init__(
        self,
        ledger: Ledger,
        connectors: ConnectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ledger = ledger
        self._connectors = connectors
        # Injected so tests can play "the ERP is still writing" deterministically.
        self._clock = clock
        self._sleep = sleep
        self._last_sweep: dict[UUID, float] = {}
        self._sweep_lock = threading.Lock()

    @activity.defn
    @translate_errors
    def poll_ack(self, ref: ExportRef) -> AckOutcome:
        record = self._ledger.get_export(ref.export_id)
        # A deactivated connection is not polled: CONNECTION_INACTIVE (permanent).
        connection = self._ledger.get_active_connection(record.erp_connection_id)
        connector = self._connectors.get(connection.connector_type)
        config = connector.parse_config(connection.config)
        with connector.session(config) as dropzone:
            try:
                outcome = self._take_own_ack(dropzone, connection, record)
            except UnsafePathError as exc:  # processed/ or error/ is a link: nothing read or moved
                self.record_unsafe_folder(connection, exc, record.id)
                raise
            if outcome is not None:
                return outcome
            self._sweep_if_due(dropzone, connection, config.poll_interval_seconds)
        # The ack may have been recorded and moved by an execution that died
        # before it could report back: the ledger remembers.
        recorded = outcome_from_record(self._ledger.get_export(record.id))
        if recorded is not None:
            return recorded
        raise AckNotYetAvailable(f"no ack for {record.filename} yet")

    # --- this export's ack ---------------------------------------------------

    def _take_own_ack(
        self, dropzone: Dropzone, connection: ConnectionRecord, record: ExportRecord
    ) -> AckOutcome | None:
        acks = dropzone.list_acks(record.filename)
        if not acks or not self._settled(dropzone, record.filename, acks):
            return None
        return self.take_settled(dropzone, connection, record, acks)

    def take_settled(
        self,
        dropzone: Dropzone,
        connection: ConnectionRecord,
        record: ExportRecord,
        acks: list[AckFile],
        *,
        hand_over: HandOver | None = None,
    ) -> AckOutcome | None:
        """Record (and move) the settled ack files of one export; the recorded answer, if any."""
        # Both ack_ and error_ for one export: the ERP contradicts itself;
        # neither is trusted, both go to error/ for an operator.
        if len({ack.kind for ack in acks}) > 1:
            for ack in acks:
                self.reject(dropzone, connection, ack, "both ack_ and error_ files exist for this export", record.id)
            return None
        for ack in acks:
            outcome = self._process(dropzone, connection, record, ack, hand_over)
            if outcome is not None:
                return outcome
        return None

    def _settled(self, dropzone: Dropzone, filename: str, acks: list[AckFile]) -> bool:
        """True unless one of ``acks`` may still be being written."""
        if all(is_settled(ack, self._clock()) for ack in acks):
            return True
        self._sleep(SECOND_LOOK_SECONDS)
        return unchanged_since(acks, dropzone.list_acks(filename), self._clock())

    def _process(
        self,
        dropzone: Dropzone,
        connection: ConnectionRecord,
        record: ExportRecord,
        ack: AckFile,
        hand_over: HandOver | None,
    ) -> AckOutcome | None:
        if ack.is_link:
            self.reject(dropzone, connection, ack, link_reason(ack), record.id)
            return None
        if ack.size > MAX_ACK_BYTES:
            # Judged from the size alone: a 50 MB file is never read into memory.
            reason = f"malformed ack file {ack.name}: larger than {MAX_ACK_BYTES} bytes ({ack.size} bytes)"
            self.reject(dropzone, connection, ack, reason, record.id)
            return None
        body = dropzone.read_ack(ack.name, max_bytes=MAX_ACK_BYTES)
        try:
            parsed = parse_ack(body, kind=ack.kind, name=ack.name)
        except MalformedAckError as exc:
            self.reject(dropzone, connection, ack, exc.message, record.id)
            return None
        self._record(record.id, parsed)
        outcome = outcome_from_record(self._ledger.get_export(record.id))
        if hand_over is not None and outcome is not None:
            hand_over(record, ack, outcome)  # the run has it before the file leaves ack_path
        dropzone.move_ack(ack.name, naming.PROCESSED_DIR)
        return outcome

    def _record(self, export_id: UUID, parsed: Ack | ErrorAck) -> ExportRecord:
        """The ERP's answer into the ledger: on time, or late after an ACK_TIMEOUT.

        Both transitions are conditional, so a retried activity (or the sweep
        racing the export's own poll) records the answer once.
        """
        if isinstance(parsed, Ack):
            row = self._ledger.mark_acked(export_id, erp_order_id=parsed.erp_order_id, acked_at=parsed.processed_at)
            if row.awaits_late_ack:
                row = self._ledger.mark_acked_late(
                    export_id, erp_order_id=parsed.erp_order_id, acked_at=parsed.processed_at
                )
            return row
        row = self._ledger.mark_failed(export_id, error_json=parsed.to_error_json())
        if row.awaits_late_ack:
            row = self._ledger.record_late_error(export_id, error_json=parsed.to_error_json())
        return row

    # --- acks nobody waits for ------------------------------------------------

    def _sweep_if_due(self, dropzone: Dropzone, connection: ConnectionRecord, poll_interval: int) -> None:
        now = time.monotonic()
        with self._sweep_lock:
            last = self._last_sweep.get(connection.id)
            if last is not None and now - last < poll_interval:
                return
            self._last_sweep[connection.id] = now
        try:
            self._sweep(dropzone, connection, grace=SWEEP_GRACE_POLLS * poll_interval)
        except DropzoneError as exc:
            # The sweep is housekeeping: it must never keep this export's ack waiting.
            if isinstance(exc, UnsafePathError):
                self.record_unsafe_folder(connection, exc, None)
            log.warning(
                "sweep of ack_path failed; will try again",
                extra={"erp_connection_id": str(connection.id), "error_code": exc.code, "error": exc.message},
            )

    def _sweep(self, dropzone: Dropzone, connection: ConnectionRecord, *, grace: float) -> None:
        now = self._clock()
        answered: set[str] = set()  # exports whose ack files were all handled at once
        for ack in dropzone.list_all_acks():
            if now - ack.mtime < grace or ack.export_filename in answered:
                continue
            # Only this connection's exports: an ERP that names another
            # organisation's file must never answer (or even learn of) that export.
            owner = self._ledger.get_export_by_filename(ack.export_filename, erp_connection_id=connection.id)
            if ack.is_link:
                self.reject(dropzone, connection, ack, link_reason(ack), owner.id if owner else None)
            elif owner is None:
                reason = (
                    f"ack file {ack.name} names {ack.export_filename}, "
                    "which no export in the ledger wrote for this connection"
                )
                self.reject(dropzone, connection, ack, reason, None)
            elif owner.awaits_late_ack:
                # The ERP answered after the ack timeout, and its workflow may no
                # longer poll (closed, or retried): the answer is as true as one on
                # time. Taken as the export's own poll takes it (both kinds at once
                # are still refused); a race with that poll records it once.
                answered.add(ack.export_filename)
                self._take_own_ack(dropzone, connection, owner)
            elif owner.status in ("ACKED", "FAILED") and now - owner.updated_at.timestamp() >= grace:
                # updated_at: the export's own poll moves its file right after
                # recording the outcome; only long-finished exports are swept.
                if self.is_recorded_answer(dropzone, ack, owner):
                    # Recorded, then the worker died before moving it (found by
                    # the chaos suite): not a duplicate, just unfinished work.
                    dropzone.move_ack(ack.name, naming.PROCESSED_DIR)
                    continue
                self.reject(dropzone, connection, ack, duplicate_reason(ack, owner), owner.id)

    def is_recorded_answer(self, dropzone: Dropzone, ack: AckFile, owner: ExportRecord) -> bool:
        """True when ``ack`` says exactly what the ledger recorded for ``owner``."""
        if ack.size > MAX_ACK_BYTES:
            return False
        try:
            parsed = parse_ack(dropzone.read_ack(ack.name, max_bytes=MAX_ACK_BYTES), kind=ack.kind, name=ack.name)
        except (MalformedAckError, AckNotYetAvailable):
            return False
        if isinstance(parsed, Ack):
            return owner.status == "ACKED" and (parsed.erp_order_id, parsed.processed_at) == (
                owner.erp_order_id,
                owner.acked_at,
            )
        recorded = {k: v for k, v in (owner.error_json or {}).items() if k != LATE_ACK_KEY}
        return owner.status == "FAILED" and recorded == parsed.to_error_json()

    # --- rejection ------------------------------------------------------------

    def record_unsafe_folder(self, connection: ConnectionRecord, exc: UnsafePathError, export_id: UUID | None) -> None:
        """``processed/`` or ``error/`` is a link: nothing moved, but an operator must see it."""
        if exc.path is None:
            return
        self._ledger.record_ack_rejection(
            org_id=connection.org_id,
            erp_connection_id=connection.id,
            export_id=export_id,
            ack_file=exc.path.rstrip("/").rsplit("/", 1)[-1],
            reason=exc.message,
            moved_to=exc.path,  # left where it is; one row per link
        )

    def reject(
        self,
        dropzone: Dropzone,
        connection: ConnectionRecord,
        ack: AckFile,
        reason: str,
        export_id: UUID | None,
    ) -> None:
        moved_to = dropzone.move_ack(ack.name, naming.ERROR_DIR)
        ack_rejected()
        # Logged before recording: if the database is down now, the log still has it.
        log.warning(
            "ack file rejected and moved to error/",
            extra={
                "ack_file": ack.name,
                "reason": reason,
                "moved_to": moved_to,
                "erp_connection_id": str(connection.id),
                "export_id": str(export_id) if export_id else None,
            },
        )
        self._ledger.record_ack_rejection(
            org_id=connection.org_id,
            erp_connection_id=connection.id,
            export_id=export_id,
            ack_file=ack.name,
            reason=reason,
            moved_to=moved_to,
        )
