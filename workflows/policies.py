"""Timeouts and retry policies of ExportOrderWorkflow, named in one place.

Whether an error is retried at all is decided by the error itself
(``dropzone.errors``: activities raise non-retryable ApplicationErrors for
permanent faults); these policies only say how often and how long.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy, SearchAttributeKey

TASK_QUEUE = "erp-exports"
WORKFLOW_TYPE = "ExportOrderWorkflow"
WORKFLOW_ID_PREFIX = "erp-export-"

# Search attributes (Keyword) the UI filters on; registered by the dev stack and
# by `temporal operator search-attribute create` on a cluster.
SA_ORG_ID = SearchAttributeKey.for_keyword("OrgId")
SA_DRAFT_ORDER_ID = SearchAttributeKey.for_keyword("DraftOrderId")
SA_EXPORT_STATUS = SearchAttributeKey.for_keyword("ExportStatus")
SEARCH_ATTRIBUTES = (SA_ORG_ID, SA_DRAFT_ORDER_ID, SA_EXPORT_STATUS)

# Database and object-storage steps are short; a transient outage (server
# restarting) is ridden out with backoff for up to a day before the attempt fails.
LEDGER_TIMEOUT = timedelta(seconds=30)
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
TRANSIENT_GIVE_UP_AFTER = timedelta(days=1)

RENDER_TIMEOUT = timedelta(minutes=10)
# Rendering and uploading heartbeat while they run (after their first seconds),
# so a worker that dies mid-render is noticed in seconds, not after 10 minutes.
RENDER_HEARTBEAT_TIMEOUT = timedelta(seconds=30)

# Delivery streams the object to the dropzone and heartbeats while it does, so
# a stalled server is detected by the heartbeat timeout, not the long overall one.
DELIVER_TIMEOUT = timedelta(minutes=30)
DELIVER_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
DELIVER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
)

# Ack polling: each poll is one short activity attempt that raises ACK_PENDING
# when nothing is there; Temporal's retry schedule is the poll loop, so the wait
# adds no history events until the ack arrives (samples-python polling/infrequent).
ACK_POLL_TIMEOUT = timedelta(seconds=60)


def ack_poll_retry(poll_interval_seconds: int) -> RetryPolicy:
    interval = timedelta(seconds=max(1, poll_interval_seconds))
    return RetryPolicy(initial_interval=interval, backoff_coefficient=1.0, maximum_interval=interval)


# A FAILED export waits this long for an operator's `retry` signal, then the run closes.
RETRY_SIGNAL_WINDOW = timedelta(days=30)

# Status callbacks (activities/webhooks.py): one POST per activity attempt, retried
# with backoff while the receiver is down or answers an error, for up to a day
# after the event happened; then the event is given up (recorded as GAVE_UP).
WEBHOOK_TIMEOUT = timedelta(seconds=30)
WEBHOOK_REQUEST_TIMEOUT_SECONDS = 10.0
# Callbacks run on a task queue of their own, served by a worker with this many
# slots per process (worker.build_worker): a receiver that hangs holds those, never
# the slots exports need; callbacks beyond them wait in Temporal's queue.
WEBHOOK_MAX_IN_FLIGHT = 4
WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
)
WEBHOOK_GIVE_UP_AFTER = timedelta(days=1)
# Left for a send whose window has all but run out, so that it is still tried once.
WEBHOOK_LAST_CHANCE = timedelta(seconds=30)


def webhook_task_queue(task_queue: str) -> str:
    return f"{task_queue}-webhooks"


def workflow_id_for(draft_order_id: object) -> str:
    return f"{WORKFLOW_ID_PREFIX}{draft_order_id}"


# One ack listener per connection (workflows/ack_listener.py): its id is derived
# from the connection id, so every export of a connection finds the same one.
LISTENER_WORKFLOW_TYPE = "AckListenerWorkflow"
LISTENER_ID_PREFIX = "erp-ack-listener-"
# New exports wait for the listener's hand-over (False: the per-export poll). Read
# only where workflow.patched(ACK_LISTENER_PATCH) decides, so a flip affects new runs.
ACK_LISTENER = True
# One listing of ack_path: records, hands over and moves what it found.
LISTENER_SCAN_TIMEOUT = timedelta(minutes=10)
LISTENER_SCAN_HEARTBEAT_TIMEOUT = timedelta(seconds=20)
LISTENER_SCAN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
# Continue-as-new once the history holds this many events (or the server suggests it).
LISTENER_MAX_HISTORY_EVENTS = 2_000
# Stale .tmp files: looked for at most this often (export_path is listed then).
STALE_TMP_SWEEP_INTERVAL = timedelta(minutes=30)
# Waiting for the listener to start (the export's one activity before its ack wait).
ENSURE_LISTENER_TIMEOUT = timedelta(seconds=30)


def listener_id_for(erp_connection_id: object) -> str:
    return f"{LISTENER_ID_PREFIX}{erp_connection_id}"
