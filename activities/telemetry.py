"""What every activity tells operators: log context, metrics, one log line per outcome.

An activity interceptor (``worker.build_worker`` installs it) keeps this out of
the activity bodies:

- **log context** — workflow id, activity type and attempt, draft, export and
  org are bound with ``structlog.contextvars`` for as long as the activity
  runs. Temporal copies the context into the activity's thread, so every line
  logged there (ours, paramiko's, botocore's) carries them. Only ids are bound:
  inputs are never logged wholesale.
- **metrics** — recorded through the Temporal SDK meter, so they share the
  worker's one Prometheus endpoint with Temporal's own metrics (and cost
  nothing when metrics are off: the meter is then a no-op).

Draft and org come from the activity input when it names them; for inputs that
only carry an export id they are read once from the ledger and cached (both
never change once an attempt is opened).

Metrics, as Prometheus names them (Temporal adds ``namespace``, ``task_queue``,
``activity_type`` and ``service_name``)::

    dropzone_exports_total{org_id,status}                 attempts reaching PENDING/SENT/ACKED/FAILED
    dropzone_delivery_duration_seconds{org_id,outcome}    one per deliver execution
    dropzone_delivered_bytes_total{org_id}                bytes written (files found already there excluded)
    dropzone_ack_latency_seconds{org_id,status}           first ack poll (right after SENT) → ack/error file seen
    dropzone_activity_retries_total{org_id}               executions after a failed one (ack polls excluded)
    dropzone_export_retries_total{org_id}                 attempts opened by an operator's retry signal
    dropzone_activity_errors_total{org_id,error_code,retryable}
    dropzone_acks_rejected_total{org_id}                  ack files moved to error/ (see ``ack_rejected``)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from temporalio import activity
from temporalio.common import MetricMeter
from temporalio.exceptions import (
    ApplicationError,
    ApplicationErrorCategory,
    CancelledError,
)
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from dropzone.contracts import AckOutcome, AttemptInfo, AttemptStatus, DeliveryOutcome
from dropzone.ledger import Ledger
from dropzone.logging_setup import bound_fields
from workflows.policies import WORKFLOW_ID_PREFIX

# Plain stdlib logging with the fields as extras: it respects levels and handlers
# whether or not the process configured structlog (tests and embedders may not);
# dropzone.logging_setup turns the extras into JSON fields.
log = logging.getLogger("dropzone.activity")

# Metric names as given to the meter; the Prometheus exporter appends _total / _seconds.
EXPORTS = "dropzone_exports"
DELIVERY_DURATION = "dropzone_delivery_duration"
DELIVERED_BYTES = "dropzone_delivered_bytes"
ACK_LATENCY = "dropzone_ack_latency"
ACTIVITY_RETRIES = "dropzone_activity_retries"
EXPORT_RETRIES = "dropzone_export_retries"
ACTIVITY_ERRORS = "dropzone_activity_errors"
ACKS_REJECTED = "dropzone_acks_rejected"

# The SDK's default buckets stop at 10 s; a delivery may stream for 30 minutes
# and an ERP may answer after days.
HISTOGRAM_BUCKETS: Mapping[str, Sequence[float]] = {
    DELIVERY_DURATION: (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    ACK_LATENCY: (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400, 259200, 604800),
}

# Their failed attempts are the polling loop, not faults worth counting as retries.
POLLING_ACTIVITIES = frozenset({"poll_ack"})
EXPORTS_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class ExportLabels:
    """Who an activity works for: the ids every log line and metric carries."""

    draft_order_id: str | None = None
    org_id: str | None = None
    export_id: str | None = None


# export id → (org id, draft order id); None when the export is unknown.
ExportOwnerLookup = Callable[[UUID], "tuple[UUID, UUID] | None"]


class ExportOwners:
    """Caches which org and draft an export belongs to (immutable once the attempt exists)."""

    def __init__(self, lookup: ExportOwnerLookup, *, max_entries: int = EXPORTS_CACHE_SIZE) -> None:
        self._cached = functools.lru_cache(maxsize=max_entries)(lookup)

    @classmethod
    def from_ledger(cls, ledger: Ledger) -> ExportOwners:
        def lookup(export_id: UUID) -> tuple[UUID, UUID]:
            record = ledger.get_export(export_id)
            return record.org_id, record.draft_order_id

        return cls(lookup)

    def owner_of(self, export_id: UUID) -> tuple[UUID, UUID] | None:
        try:
            return self._cached(export_id)
        except Exception:  # noqa: BLE001 (telemetry must never fail an activity)
            return None


def labels_from(info: activity.Info, args: Sequence[Any]) -> ExportLabels:
    """What the input itself says: every contract names an export, a draft or an org."""
    payload = args[0] if args else None
    draft = getattr(payload, "draft_order_id", None)
    if draft is None and info.workflow_id and info.workflow_id.startswith(WORKFLOW_ID_PREFIX):
        draft = info.workflow_id.removeprefix(WORKFLOW_ID_PREFIX)
    export_id = getattr(payload, "export_id", None)
    org = getattr(payload, "org_id", None)
    return ExportLabels(
        draft_order_id=str(draft) if draft else None,
        org_id=str(org) if org else None,
        export_id=str(export_id) if export_id else None,
    )


class TelemetryInterceptor(Interceptor):
    """Binds log context and records metrics around every activity of the worker."""

    def __init__(self, owners: ExportOwners | None = None) -> None:
        self._owners = owners

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TelemetryInbound(next, self._owners)


class _TelemetryInbound(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, owners: ExportOwners | None) -> None:
        super().__init__(next)
        self._owners = owners

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        labels = await self._labels(info, input.args)
        fields = bound_fields(
            workflow_id=info.workflow_id,
            workflow_run_id=info.workflow_run_id,
            activity_type=info.activity_type,
            attempt=info.attempt,
            draft_order_id=labels.draft_order_id,
            export_id=labels.export_id,
            org_id=labels.org_id,
        )
        with structlog.contextvars.bound_contextvars(**fields):
            metrics = ActivityMetrics(_meter(), labels)
            if info.attempt > 1 and info.activity_type not in POLLING_ACTIVITIES:
                metrics.count(ACTIVITY_RETRIES)
            started = time.monotonic()
            try:
                result = await super().execute_activity(input)
            except BaseException as exc:
                _never_fails(_on_failure, info, metrics, exc, time.monotonic() - started)
                raise
            _never_fails(_on_success, info, metrics, result, time.monotonic() - started)
            return result

    async def _labels(self, info: activity.Info, args: Sequence[Any]) -> ExportLabels:
        labels = labels_from(info, args)
        if self._owners is None or labels.export_id is None or labels.org_id is not None:
            return labels
        # A ledger read: off the event loop, like the activity itself.
        owner = await asyncio.to_thread(self._owners.owner_of, UUID(labels.export_id))
        if owner is None:
            return labels
        org_id, draft_order_id = owner
        return ExportLabels(draft_order_id=str(draft_order_id), org_id=str(org_id), export_id=labels.export_id)


def _never_fails(record: Callable[..., None], *args: Any) -> None:
    """Telemetry must not turn a finished activity into a failed (and retried) one."""
    try:
        record(*args)
    except Exception:  # a bug here is logged, never raised
        log.exception("recording activity telemetry failed")


def _meter() -> MetricMeter:
    try:
        return activity.metric_meter()
    except RuntimeError:  # process-pool activities have no meter
        return MetricMeter.noop


class ActivityMetrics:
    """The project's instruments on the running activity's meter, labelled with its org."""

    def __init__(self, meter: MetricMeter, labels: ExportLabels) -> None:
        self._meter = meter
        self._org = {"org_id": labels.org_id} if labels.org_id else {}

    def count(self, name: str, value: int = 1, **attributes: str) -> None:
        if value > 0:
            self._meter.create_counter(name).add(value, {**self._org, **attributes})

    def duration(self, name: str, elapsed: timedelta, **attributes: str) -> None:
        self._meter.create_histogram_timedelta(name).record(max(elapsed, timedelta(0)), {**self._org, **attributes})


def _fields(**fields: Any) -> dict[str, Any]:
    """Extras for a log record; ``None`` stays out of the line."""
    return {key: value for key, value in fields.items() if value is not None}


def _on_success(info: activity.Info, metrics: ActivityMetrics, result: Any, seconds: float) -> None:
    elapsed = timedelta(seconds=seconds)
    duration_ms = round(seconds * 1000, 1)
    if isinstance(result, AttemptInfo):
        metrics.count(EXPORTS, status="PENDING")
        if result.attempt > 1:
            metrics.count(EXPORT_RETRIES)
        log.info("attempt opened", extra=_fields(export_id=str(result.export_id), export_attempt=result.attempt,
                                                 export_file=result.filename, duration_ms=duration_ms))
    elif isinstance(result, DeliveryOutcome):
        metrics.count(EXPORTS, status="SENT")
        metrics.duration(DELIVERY_DURATION, elapsed, outcome="ok")
        if not result.already_present:
            metrics.count(DELIVERED_BYTES, result.size_bytes)
        log.info("export delivered", extra=_fields(dropzone_path=result.dropzone_path, size_bytes=result.size_bytes,
                                                   already_present=result.already_present, duration_ms=duration_ms))
    elif isinstance(result, AckOutcome):
        metrics.count(EXPORTS, status=result.status)
        metrics.duration(ACK_LATENCY, _since_first_poll(info), status=result.status)
        log.info("ack received", extra=_fields(status=result.status, erp_order_id=result.erp_order_id,
                                               error_code=result.error.code if result.error else None,
                                               duration_ms=duration_ms))
    elif isinstance(result, AttemptStatus):
        metrics.count(EXPORTS, status=str(result.status))
        log.info("failure recorded", extra=_fields(status=str(result.status), duration_ms=duration_ms))
    else:
        log.debug("activity completed", extra=_fields(duration_ms=duration_ms))


def _on_failure(info: activity.Info, metrics: ActivityMetrics, exc: BaseException, seconds: float) -> None:
    duration_ms = round(seconds * 1000, 1)
    if info.activity_type == "deliver":
        metrics.duration(DELIVERY_DURATION, timedelta(seconds=seconds), outcome="error")
    if isinstance(exc, (asyncio.CancelledError, CancelledError)):
        log.info("activity cancelled", extra=_fields(duration_ms=duration_ms))
        return
    if isinstance(exc, ApplicationError):
        if exc.category == ApplicationErrorCategory.BENIGN:  # "no ack yet": the poll loop working
            log.debug("activity pending", extra=_fields(reason=exc.type, duration_ms=duration_ms))
            return
        code, retryable = exc.type or "ACTIVITY_FAILED", not exc.non_retryable
    else:  # a bug; Temporal logs the traceback, and retries it
        code, retryable = "INTERNAL", True
    metrics.count(ACTIVITY_ERRORS, error_code=code, retryable=str(retryable).lower())
    log.warning("activity failed", extra=_fields(
        error_code=code, retryable=retryable, duration_ms=duration_ms,
        error=exc.message if isinstance(exc, ApplicationError) else type(exc).__name__,
    ))


def _since_first_poll(info: activity.Info) -> timedelta:
    # scheduled_time is the first attempt's: the poll is scheduled right after SENT.
    scheduled = info.scheduled_time
    if scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=UTC)
    return datetime.now(UTC) - scheduled


def ack_recorded(outcome: AckOutcome, *, workflow_id: str | None, draft_order_id: UUID, sent_at: datetime | None) -> None:
    """Count and log one ERP answer the ack listener recorded, as the per-export poll's result is.

    The org label comes from the log context (the listener binds its connection's);
    the line names the export's workflow, whose answer it is.
    """
    if not activity.in_activity():
        return
    org = structlog.contextvars.get_contextvars().get("org_id")
    metrics = ActivityMetrics(_meter(), ExportLabels(org_id=org))
    metrics.count(EXPORTS, status=outcome.status)
    if sent_at is not None:
        metrics.duration(ACK_LATENCY, datetime.now(UTC) - sent_at, status=outcome.status)
    context = bound_fields(workflow_id=workflow_id, draft_order_id=str(draft_order_id), export_id=str(outcome.export_id))
    with structlog.contextvars.bound_contextvars(**context):
        log.info("ack received", extra=_fields(status=outcome.status, erp_order_id=outcome.erp_order_id,
                                               error_code=outcome.error.code if outcome.error else None))


def ack_rejected() -> None:
    """Count one ack file moved to ``error/``; call it from the activity that moved it.

    Only the ack activity knows that a file was rejected, so it reports it; the
    org label comes from the log context the interceptor bound.
    """
    if not activity.in_activity():  # a unit test, a script
        return
    org = structlog.contextvars.get_contextvars().get("org_id")
    attributes = {"org_id": org} if org else {}
    _meter().create_counter(ACKS_REJECTED).add(1, attributes)
