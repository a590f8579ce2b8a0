"""The ack poll: one look into ``ack_path`` per activity attempt.

``poll_ack`` raises ``AckNotYetAvailable`` (retryable) when no ack is there, so
Temporal's retry schedule is the polling loop and waiting costs no history.
Each step is safe to repeat: the ledger transition is conditional and the ack
file is moved only after the ledger has recorded it, so a crash between the two
re-reads the same file and records nothing twice.
"""

from __future__ import annotations

import logging

from temporalio import activity

from activities.failures import translate_errors
from dropzone import naming
from dropzone.acks import MAX_ACK_BYTES, Ack, ErrorAck, parse_ack
from dropzone.connectors import ConnectorRegistry
from dropzone.contracts import AckOutcome, ErrorInfo, ExportRef
from dropzone.errors import AckNotYetAvailable, MalformedAckError
from dropzone.ledger import ExportRecord, Ledger
from dropzone.transports.base import AckFile, Dropzone

log = logging.getLogger(__name__)


def _outcome_from_record(record: ExportRecord) -> AckOutcome | None:
    if record.status == "ACKED":
        return AckOutcome(export_id=record.id, status="ACKED", erp_order_id=record.erp_order_id)
    if record.status == "FAILED" and record.error_json:
        error = ErrorInfo(
            code=str(record.error_json.get("code", "ERP_REJECTED")),
            message=str(record.error_json.get("message", "")),
        )
        return AckOutcome(export_id=record.id, status="FAILED", error=error)
    return None


class AckActivities:
    def __init__(self, ledger: Ledger, connectors: ConnectorRegistry) -> None:
        self._ledger = ledger
        self._connectors = connectors

    @activity.defn
    @translate_errors
    def poll_ack(self, ref: ExportRef) -> AckOutcome:
        record = self._ledger.get_export(ref.export_id)
        connection = self._ledger.get_connection(record.erp_connection_id)
        connector = self._connectors.get(connection.connector_type)
        config = connector.parse_config(connection.config)
        with connector.session(config) as dropzone:
            acks = dropzone.list_acks(record.filename)
            # Both ack_ and error_ for one export: the ERP contradicts itself;
            # neither is trusted, both go to error/ for an operator.
            if len({ack.kind for ack in acks}) > 1:
                for ack in acks:
                    self._reject(dropzone, ack, "both ack_ and error_ files exist for this export")
                acks = []
            for ack in acks:
                outcome = self._process(dropzone, record, ack)
                if outcome is not None:
                    return outcome
        # The ack may have been recorded and moved by an execution that died
        # before it could report back: the ledger remembers.
        recorded = _outcome_from_record(self._ledger.get_export(record.id))
        if recorded is not None:
            return recorded
        raise AckNotYetAvailable(f"no ack for {record.filename} yet")

    def _process(self, dropzone: Dropzone, record: ExportRecord, ack: AckFile) -> AckOutcome | None:
        body = dropzone.read_ack(ack.name, max_bytes=MAX_ACK_BYTES)
        try:
            parsed = parse_ack(body, kind=ack.kind, name=ack.name)
        except MalformedAckError as exc:
            self._reject(dropzone, ack, exc.message)
            return None
        if isinstance(parsed, Ack):
            self._ledger.mark_acked(
                record.id, erp_order_id=parsed.erp_order_id, acked_at=parsed.processed_at
            )
        else:
            assert isinstance(parsed, ErrorAck)
            self._ledger.mark_failed(record.id, error_json=parsed.to_error_json())
        dropzone.move_ack(ack.name, naming.PROCESSED_DIR)
        return _outcome_from_record(self._ledger.get_export(record.id))

    def _reject(self, dropzone: Dropzone, ack: AckFile, reason: str) -> None:
        moved_to = dropzone.move_ack(ack.name, naming.ERROR_DIR)
        log.warning("malformed ack file moved to error/", extra={"ack_file": ack.name, "reason": reason, "moved_to": moved_to})
