"""How one try of a status callback goes over HTTP (``activities/webhooks.py``, urllib3).

Real PostgreSQL ledger and real HTTP servers on 127.0.0.1: each row of the module's error
table is recorded on the event with the URL's token left out; a receiver that keeps its
connections alive gets a burst's tries on one connection; one whose answer is too long
to keep still counts as delivered, and the next try opens a new connection.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from activities.webhooks import MAX_ANSWER_BYTES, WebhookActivities
from dropzone.ledger import Ledger
from dropzone.ledger.webhooks import WebhookEvents
from tests.conftest import Target
from tests.helpers import free_port
from tests.test_webhooks import with_webhook
from tests.test_webhooks_at_close import sent_event

pytestmark = pytest.mark.asyncio(loop_scope="session")


class KeepAliveReceiver:
    """Answers ``status`` with ``answer_bytes`` of body, HTTP/1.1, and notes each request's client port."""

    def __init__(self, status: int = 204, answer_bytes: int = 0) -> None:
        self.client_ports: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.client_ports.append(self.client_address[1])
                self.send_response(status)
                self.send_header("content-length", str(answer_bytes))
                self.end_headers()
                self.wfile.write(b"x" * answer_bytes)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks?token=not-a-secret"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def _try_twice(ledger: Ledger, target: Target, url: str) -> list[Any]:
    with_webhook(ledger, target, url)
    activities = WebhookActivities(ledger)
    try:
        return [await activities.send_webhook_at_close(sent_event(target)) for _ in range(2)]
    finally:
        activities.close()


async def test_tries_of_a_burst_share_one_kept_alive_connection(ledger: Ledger, fs_target: Target):
    receiver = KeepAliveReceiver(status=204)
    try:
        outcomes = await _try_twice(ledger, fs_target, receiver.url)
    finally:
        receiver.close()
    assert [(o.status, o.response_status) for o in outcomes] == [("DELIVERED", 204)] * 2
    assert len(receiver.client_ports) == 2 and len(set(receiver.client_ports)) == 1


async def test_an_answer_too_long_to_keep_still_delivers_and_the_next_try_reconnects(
    ledger: Ledger, fs_target: Target
):
    receiver = KeepAliveReceiver(status=200, answer_bytes=4 * MAX_ANSWER_BYTES)
    try:
        outcomes = await _try_twice(ledger, fs_target, receiver.url)
    finally:
        receiver.close()
    assert [(o.status, o.response_status) for o in outcomes] == [("DELIVERED", 200)] * 2
    assert len(set(receiver.client_ports)) == 2  # the first connection was closed, not pooled


async def _try_once(ledger: Ledger, target: Target, url: str) -> tuple[Any, Any]:
    """One try of a fresh event, and its row."""
    with_webhook(ledger, target, url)
    activities = WebhookActivities(ledger)
    delivery = sent_event(target)
    try:
        outcome = await activities.send_webhook_at_close(delivery)
    finally:
        activities.close()
    [row] = WebhookEvents(ledger).for_draft(delivery.event.draft_order_id)
    return outcome, row


async def test_a_receiver_answering_500_is_recorded_as_a_failed_try(ledger: Ledger, fs_target: Target):
    receiver = KeepAliveReceiver(status=500)
    try:
        outcome, row = await _try_once(ledger, fs_target, receiver.url)
    finally:
        receiver.close()
    assert (outcome.status, outcome.delivery_attempts) == ("PENDING", 1)
    assert (str(row.status), row.response_status) == ("PENDING", 500)
    assert row.last_error.endswith("/hooks answered HTTP 500")
    assert "not-a-secret" not in row.last_error


async def test_nothing_listening_is_cannot_connect_not_a_timeout(ledger: Ledger, fs_target: Target):
    outcome, row = await _try_once(ledger, fs_target, f"http://127.0.0.1:{free_port()}/hooks?token=not-a-secret")
    assert (outcome.status, outcome.delivery_attempts) == ("PENDING", 1)
    assert row.last_error.endswith("/hooks: cannot connect (NewConnectionError)")
    assert row.response_status is None and "not-a-secret" not in row.last_error


async def test_a_try_recorded_after_delivery_changes_nothing(ledger: Ledger, fs_target: Target):
    """The one prebuilt upsert: a later try updates a PENDING row, never a final one."""
    events, delivery = WebhookEvents(ledger), sent_event(fs_target)

    def record(tries: int, delivered: bool) -> Any:
        return events.record_try(
            org_id=delivery.org_id, erp_connection_id=delivery.erp_connection_id, event=delivery.event,
            tries=tries, delivered=delivered, response_status=204 if delivered else 503,
            error=None if delivered else "answered HTTP 503",
        )

    first = record(1, delivered=False)
    second = record(2, delivered=True)
    late = record(3, delivered=False)  # e.g. a duplicate try that lost its answer
    assert (str(first.status), first.delivery_attempts, first.last_error) == ("PENDING", 1, "answered HTTP 503")
    assert (str(second.status), second.delivery_attempts, second.last_error) == ("DELIVERED", 2, None)
    assert late == second
    assert second.created_at == first.created_at and second.delivered_at is not None
