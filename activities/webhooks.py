"""Activities that send an export's status callbacks (``dropzone/webhooks.py``).

One POST per activity attempt; Temporal's retry policy (``Policies.webhook_retry``, workflows/policies.py)
is the backoff while the receiver is down or answers anything but 2xx. The
URL and the ``whsec_`` secret are loaded from the connection's encrypted
config by id: neither ever enters the workflow's history. Every try is
recorded in ``erp_webhook_event``, so ``dropzone status`` shows how delivery goes.

Sent with urllib3 (already botocore's HTTP client): a POST costs the worker about two thirds of the
CPU of an httpx one, and one is made for every export (benchmarks/bench_webhooks.py).
Error table (urllib3 → ours, first match), all retryable with code ``WEBHOOK_UNDELIVERED``:

    NewConnectionError        "<url>: cannot connect (NewConnectionError)"
                              (listed first: urllib3 makes it a ConnectTimeoutError)
    TimeoutError              "<url>: no answer within <n> s"
    HTTPError (the rest)      "<url>: cannot connect (<exception type>)"
    response status not 2xx   "<url> answered HTTP <status>"

A connection that no longer names a webhook fails the event at once (INVALID_CONFIG).
They run on a worker and task queue of their own (``worker.build_worker``), so a
receiver that hangs never takes the activity slots that exports need.
A connection's URL and secret are kept for ``TARGET_CACHE_SECONDS`` per worker (a
burst of exports on one connection decrypts its config once); a changed webhook
is used from then on.
Messages name the URL without its query or user info (they may hold tokens).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as HTTPTimeoutError
from temporalio import activity

from activities.failures import translate_errors
from dropzone.connection_config import parse_connection_config
from dropzone.contracts import WebhookDelivery, WebhookDeliveryOutcome, WebhookGiveUp
from dropzone.errors import WEBHOOK_UNDELIVERED, InvalidConfigError, TransientError
from dropzone.ledger import Ledger
from dropzone.ledger.models import WebhookEventRecord
from dropzone.ledger.webhooks import WebhookEvents
from dropzone.webhooks import describe_url, signed_headers
from workflows import policies

USER_AGENT = "orderflow-dropzone-webhooks/1"
TARGET_CACHE_SECONDS = 10.0
# A healthy receiver answers in milliseconds, and the local tries' threads serve hundreds a
# second: a try that waits longer for one is left to the regular activity.
AT_CLOSE_SLOT_WAIT_SECONDS = 0.5
# After a local try failed, the connection's callbacks go straight to the regular activity
# for this long, so that a receiver that hangs holds closing runs' workflow tasks only once.
AT_CLOSE_PAUSE_SECONDS = 30.0
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Target:
    url: str
    secret: str = field(repr=False)
    expires: float


def _undelivered(message: str) -> TransientError:
    return TransientError(message, code=WEBHOOK_UNDELIVERED)


def _transport_error(url: str, exc: HTTPError, timeout_seconds: float) -> str:
    """The error table above, in one place."""
    if isinstance(exc, HTTPTimeoutError) and not isinstance(exc, NewConnectionError):
        return f"{describe_url(url)}: no answer within {timeout_seconds:g} s"
    return f"{describe_url(url)}: cannot connect ({type(exc).__name__})"


def _discard_answer(response: urllib3.BaseHTTPResponse) -> None:
    """What a receiver answers is not ours to keep: up to ``MAX_ANSWER_BYTES`` are read so that
    the connection goes back to the pool; a longer answer, or one that breaks off, closes it
    (the status line came first and stands)."""
    try:
        response.read(MAX_ANSWER_BYTES)
        if not response.read(1):
            response.release_conn()
            return
    except HTTPError:
        pass
    response.close()


def _not_delivered(delivery: WebhookDelivery, *, tries: int) -> WebhookDeliveryOutcome:
    return WebhookDeliveryOutcome(event_id=delivery.event.event_id, status="PENDING", delivery_attempts=tries)


class WebhookActivities:
    def __init__(
        self,
        ledger: Ledger,
        http: urllib3.PoolManager | None = None,
        *,
        request_timeout: timedelta = policies.DEFAULT_POLICIES.webhook_request_timeout,
        max_in_flight: int = policies.DEFAULT_POLICIES.webhook_max_in_flight,
        local_timeout: timedelta = policies.DEFAULT_POLICIES.webhook_local_timeout,
    ) -> None:
        self._request_timeout_seconds = request_timeout.total_seconds()
        self._local_timeout_seconds = local_timeout.total_seconds()
        # The threads of send_webhook_at_close (it runs in the exports' worker), one slot each,
        # and when a connection whose local try failed may be tried that way again.
        self._at_close = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="webhooks-at-close")
        self._at_close_slots = asyncio.Semaphore(max_in_flight)
        self._at_close_resumes: dict[UUID, float] = {}
        self._events = WebhookEvents(ledger)
        self._ledger = ledger
        self._targets: dict[UUID, _Target] = {}
        self._targets_lock = threading.Lock()
        # One pooled client per worker (thread-safe). No retries (Temporal's retry policy is the
        # backoff) and no redirects: a receiver that moved must be reconfigured, the signature
        # is for the URL we were given.
        self._http = http or urllib3.PoolManager(num_pools=32, maxsize=16, retries=False)

    def close(self) -> None:
        self._at_close.shutdown(wait=False, cancel_futures=True)
        self._http.clear()

    @activity.defn
    @translate_errors
    def send_webhook(self, delivery: WebhookDelivery) -> WebhookDeliveryOutcome:
        return self._post(delivery, delivery.tries_before + activity.info().attempt, self._request_timeout_seconds)

    @activity.defn
    async def send_webhook_at_close(self, delivery: WebhookDelivery) -> WebhookDeliveryOutcome:
        """One try of a closing run's callback, as a local activity in its last workflow task.

        It runs in the exports' worker, on threads of its own, with a short request timeout,
        so that a slow receiver holds a closing run's workflow task for seconds at most, and
        never a thread an export's activity needs. It declines (nothing sent) when every
        thread stays busy for ``AT_CLOSE_SLOT_WAIT_SECONDS`` and, for ``AT_CLOSE_PAUSE_SECONDS``,
        for a connection whose last local try failed. PENDING (with the tries made so far,
        ``tries_before`` included) means the regular ``send_webhook`` takes the event over.
        """
        connection_id = delivery.erp_connection_id
        if self._paused(connection_id):
            return _not_delivered(delivery, tries=delivery.tries_before)
        try:
            async with asyncio.timeout(AT_CLOSE_SLOT_WAIT_SECONDS):
                await self._at_close_slots.acquire()
        except TimeoutError:
            return _not_delivered(delivery, tries=delivery.tries_before)
        delivered = False
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(self._at_close, self._try_at_close, delivery)
            delivered = outcome.status == "DELIVERED"
            return outcome
        finally:
            self._at_close_slots.release()
            self._note_local_try(connection_id, delivered)

    def try_with_delivery(self, delivery: WebhookDelivery) -> WebhookDeliveryOutcome | None:
        """One try of the SENT callback, in the deliver activity's own thread (activities/exports.py).

        The same short request timeout and the same pause as the local try at close: a
        receiver that hangs holds one delivery for ``webhook_local_timeout`` at most, and
        that connection's next ones not at all. Never raises (the file is delivered
        whatever happens here): None when the try itself could not be made or recorded;
        PENDING means the workflow's queue takes the event over, counting this try.
        """
        connection_id = delivery.erp_connection_id
        if self._paused(connection_id):
            return None
        try:
            outcome = self._try_at_close(delivery)
        except Exception as exc:  # the ledger or the connection's config: the queue retries it
            activity.logger.warning("status callback %s not tried with the delivery: %s", delivery.event.event_id,
                                    getattr(exc, "message", type(exc).__name__))
            return None
        self._note_local_try(connection_id, outcome.status == "DELIVERED")
        return outcome

    def _paused(self, connection_id: UUID) -> bool:
        return self._at_close_resumes.get(connection_id, 0.0) > time.monotonic()

    def _note_local_try(self, connection_id: UUID, delivered: bool) -> None:
        if delivered:
            self._at_close_resumes.pop(connection_id, None)
        else:
            self._at_close_resumes[connection_id] = time.monotonic() + AT_CLOSE_PAUSE_SECONDS

    @translate_errors
    def _try_at_close(self, delivery: WebhookDelivery) -> WebhookDeliveryOutcome:
        try:
            return self._post(delivery, delivery.tries_before + 1, self._local_timeout_seconds)
        except TransientError as exc:
            if exc.code != WEBHOOK_UNDELIVERED:
                raise
            return _not_delivered(delivery, tries=delivery.tries_before + 1)  # recorded as a try

    def _post(self, delivery: WebhookDelivery, tries: int, timeout_seconds: float) -> WebhookDeliveryOutcome:
        event = delivery.event
        target = self._target(delivery.erp_connection_id)
        url = target.url
        body = event.body()
        headers = {**signed_headers(target.secret, event, body, int(time.time())), "user-agent": USER_AGENT}
        try:
            response = self._http.request(
                "POST", url, body=body, headers=headers, redirect=False, preload_content=False,
                timeout=urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds),
            )
            _discard_answer(response)
        except HTTPError as exc:
            error = _transport_error(url, exc, timeout_seconds)
            self._record(delivery, tries, error=error)
            raise _undelivered(error) from None
        if not 200 <= response.status < 300:
            error = f"{describe_url(url)} answered HTTP {response.status}"
            self._record(delivery, tries, error=error, response_status=response.status)
            raise _undelivered(error)
        record = self._record(delivery, tries, response_status=response.status, delivered=True)
        return WebhookDeliveryOutcome(
            event_id=event.event_id,
            status=record.status.value,  # type: ignore[arg-type]
            delivery_attempts=record.delivery_attempts,
            response_status=response.status,
        )

    def _target(self, connection_id: UUID) -> _Target:
        now = time.monotonic()
        with self._targets_lock:
            cached = self._targets.get(connection_id)
        if cached is not None and cached.expires > now:
            return cached
        config = parse_connection_config(self._ledger.get_connection(connection_id).config)
        if config.webhook_url is None or config.webhook_secret is None:
            raise InvalidConfigError(f"connection {connection_id} has no webhook_url any more")
        target = _Target(config.webhook_url, config.webhook_secret.get_secret_value(), now + TARGET_CACHE_SECONDS)
        with self._targets_lock:
            self._targets[connection_id] = target
        return target

    @activity.defn
    @translate_errors
    def give_up_webhook(self, request: WebhookGiveUp) -> WebhookDeliveryOutcome:
        delivery = request.delivery
        record = self._events.give_up(
            org_id=delivery.org_id,
            erp_connection_id=delivery.erp_connection_id,
            event=delivery.event,
            reason=request.reason,
        )
        return WebhookDeliveryOutcome(
            event_id=record.event_id,
            status=record.status.value,  # type: ignore[arg-type]
            delivery_attempts=record.delivery_attempts,
            response_status=record.response_status,
        )

    def _record(
        self,
        delivery: WebhookDelivery,
        tries: int,
        *,
        error: str | None = None,
        response_status: int | None = None,
        delivered: bool = False,
    ) -> WebhookEventRecord:
        return self._events.record_try(
            org_id=delivery.org_id,
            erp_connection_id=delivery.erp_connection_id,
            event=delivery.event,
            tries=tries,
            delivered=delivered,
            response_status=response_status,
            error=error,
        )
