"""Timeouts and retry policies of the workflows, as one object handed to the worker.

``Policies`` holds every timeout and retry policy ``ExportOrderWorkflow`` and
``AckListenerWorkflow`` use; its defaults are the production values.
``worker.build_worker(..., policies=Policies(...))`` registers the object for
its task queue (``registered``) while it runs, and a workflow reads its own with
``current()``, by ``workflow.info().task_queue``. Nothing registered for a queue
(a ``Replayer``, a worker built without one) means the defaults. Every worker
of a task queue must be given the same object: timeouts that differ between
workers are not a nondeterminism, but they are confusing. Tests pass a shorter
one; nothing patches this module.

This module is passed through the workflow sandbox (``worker.build_workflow_runner``),
so that a workflow sees the registry of the process it runs in.

Whether an error is retried at all is decided by the error itself
(``dropzone.errors``: activities raise non-retryable ApplicationErrors for
permanent faults); these policies only say how often and how long.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

WORKFLOW_TYPE = "ExportOrderWorkflow"
WORKFLOW_ID_PREFIX = "erp-export-"

# Search attributes (Keyword) the UI filters on; registered by the dev stack and
# by `temporal operator search-attribute create` on a cluster.
SA_ORG_ID = SearchAttributeKey.for_keyword("OrgId")
SA_DRAFT_ORDER_ID = SearchAttributeKey.for_keyword("DraftOrderId")
SA_EXPORT_STATUS = SearchAttributeKey.for_keyword("ExportStatus")
SEARCH_ATTRIBUTES = (SA_ORG_ID, SA_DRAFT_ORDER_ID, SA_EXPORT_STATUS)


def _backoff(maximum: timedelta, *, attempts: int = 0) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=maximum,
        maximum_attempts=attempts,
    )


@dataclass(frozen=True, kw_only=True)
class Policies:
    """Every timeout and retry policy of the workflows (and the worker knobs that go with them)."""

    # Database and object-storage steps are short; a transient outage (server
    # restarting) is ridden out with backoff for up to a day before the attempt fails.
    ledger_timeout: timedelta = timedelta(seconds=30)
    ledger_retry: RetryPolicy = field(default_factory=lambda: _backoff(timedelta(seconds=30)))
    transient_give_up_after: timedelta = timedelta(days=1)

    render_timeout: timedelta = timedelta(minutes=10)
    # Rendering and uploading heartbeat while they run (after their first seconds),
    # so a worker that dies mid-render is noticed in seconds, not after 10 minutes.
    render_heartbeat_timeout: timedelta = timedelta(seconds=30)

    # Delivery streams the object to the dropzone and heartbeats while it does, so
    # a stalled server is detected by the heartbeat timeout, not the long overall one.
    # A .tmp older than deliver_timeout belongs to no running delivery (the ack
    # listener removes it).
    deliver_timeout: timedelta = timedelta(minutes=30)
    deliver_heartbeat_timeout: timedelta = timedelta(seconds=30)
    deliver_retry: RetryPolicy = field(default_factory=lambda: _backoff(timedelta(seconds=60)))

    # Ack polling: each poll is one short activity attempt that raises ACK_PENDING
    # when nothing is there; Temporal's retry schedule is the poll loop, so the wait
    # adds no history events until the ack arrives (samples-python polling/infrequent).
    ack_poll_timeout: timedelta = timedelta(seconds=60)

    # A FAILED export waits this long for an operator's retry, then the run closes.
    retry_signal_window: timedelta = timedelta(days=30)

    # Status callbacks (activities/webhooks.py): one POST per activity attempt, retried
    # with backoff while the receiver is down or answers an error, for up to a day
    # after the event happened; then the event is given up (recorded as GAVE_UP).
    webhook_timeout: timedelta = timedelta(seconds=30)
    webhook_request_timeout: timedelta = timedelta(seconds=10)
    # Callbacks run on a task queue of their own, served by a worker with this many
    # slots per process (worker.build_worker): a receiver that hangs holds those, never
    # the slots exports need; callbacks beyond them wait in Temporal's queue.
    webhook_max_in_flight: int = 4
    webhook_retry: RetryPolicy = field(default_factory=lambda: _backoff(timedelta(minutes=10)))
    webhook_give_up_after: timedelta = timedelta(days=1)
    # Left for a send whose window has all but run out, so that it is still tried once.
    webhook_last_chance: timedelta = timedelta(seconds=30)
    # A closing run tries its callbacks first as a local activity (workflows/webhook_queue.py;
    # False: always the regular activity). Read only where workflow.patched decides.
    webhook_local_at_close: bool = True
    # That try's request timeout: a slower receiver gets the event from the regular activity.
    webhook_local_timeout: timedelta = timedelta(seconds=2)
    # The deliver activity sends the SENT callback itself, one try with the same timeout,
    # once the file is published (activities/exports.py): a receiver that answers costs the
    # run no command and no history event. False: the SENT event goes through the queue.
    webhook_sent_with_delivery: bool = True

    # New exports wait for the listener's hand-over (False: the per-export poll). Read
    # only where workflow.patched(ACK_LISTENER_PATCH) decides, so a flip affects new runs.
    ack_listener: bool = True
    # One listing of ack_path: records, hands over and moves what it found.
    listener_scan_timeout: timedelta = timedelta(minutes=10)
    listener_scan_heartbeat_timeout: timedelta = timedelta(seconds=20)
    listener_scan_retry: RetryPolicy = field(default_factory=lambda: _backoff(timedelta(seconds=10), attempts=3))
    # Continue-as-new once the history holds this many events (or the server suggests it).
    listener_max_history_events: int = 2_000
    # Stale .tmp files: looked for at most this often (export_path is listed then).
    stale_tmp_sweep_interval: timedelta = timedelta(minutes=30)
    # Waiting for the listener to start (the export's one activity before its ack wait).
    ensure_listener_timeout: timedelta = timedelta(seconds=30)


DEFAULT_POLICIES = Policies()

_registered: dict[str, tuple[Policies, int]] = {}
_registered_lock = threading.Lock()


@contextmanager
def registered(task_queue: str, chosen: Policies) -> Iterator[None]:
    """``chosen`` is what workflows on ``task_queue`` use in this process while this lasts."""
    with _registered_lock:
        held, count = _registered.get(task_queue, (chosen, 0))
        if held != chosen:
            raise ValueError(f"task queue {task_queue!r} already runs with other policies in this process")
        _registered[task_queue] = (held, count + 1)
    try:
        yield
    finally:
        with _registered_lock:
            held, count = _registered[task_queue]
            if count == 1:
                del _registered[task_queue]
            else:
                _registered[task_queue] = (held, count - 1)


def for_task_queue(task_queue: str) -> Policies:
    entry = _registered.get(task_queue)
    return entry[0] if entry is not None else DEFAULT_POLICIES


def current() -> Policies:
    """The policies of the running workflow (its worker's, by task queue)."""
    return for_task_queue(workflow.info().task_queue)


def ack_poll_retry(poll_interval_seconds: int) -> RetryPolicy:
    """The poll loop of an ack wait: one try per the connection's poll interval."""
    interval = timedelta(seconds=max(1, poll_interval_seconds))
    return RetryPolicy(initial_interval=interval, backoff_coefficient=1.0, maximum_interval=interval)


def webhook_task_queue(task_queue: str) -> str:
    return f"{task_queue}-webhooks"


def workflow_id_for(draft_order_id: object) -> str:
    return f"{WORKFLOW_ID_PREFIX}{draft_order_id}"


# One ack listener per connection (workflows/ack_listener.py): its id is derived
# from the connection id, so every export of a connection finds the same one.
LISTENER_WORKFLOW_TYPE = "AckListenerWorkflow"
LISTENER_ID_PREFIX = "erp-ack-listener-"


def listener_id_for(erp_connection_id: object) -> str:
    return f"{LISTENER_ID_PREFIX}{erp_connection_id}"
