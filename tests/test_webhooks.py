"""Status callbacks end to end: dev server, real worker, PostgreSQL, SeaweedFS, a filesystem
dropzone and a real HTTP receiver (``http.server`` on 127.0.0.1, in a thread).

The receiver gets the signed events of an export in order and verifies them with the
``standardwebhooks`` library and with the README's own recipe; a receiver that is down
gets them once it is back, while the export itself was ACKED on time; a receiver that
answers 500 forever does not keep the export from ACKED. Retry intervals and the
give-up window are shortened by the ``Policies`` the test hands to its worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Replayer

from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.ledger import Ledger
from dropzone.ledger.webhooks import WebhookEvents
from dropzone.webhooks import new_secret, sent_event_id
from starter.api import RetryRejected, export_handle, retry_export, start_export
from tests.conftest import Target
from tests.fixtures.temporal import TEST_DATA_CONVERTER
from tests.helpers import (
    ack_body,
    error_body,
    eventually,
    free_port,
    make_draft,
    wait_for_state,
    write_ack_atomically,
)
from workflows.policies import Policies
from workflows.export_order import ExportOrderWorkflow

pytestmark = pytest.mark.asyncio(loop_scope="session")

README = Path(__file__).resolve().parents[1] / "README.md"
HISTORIES = Path(__file__).parent / "data" / "histories"
FAST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=1.5,
                         maximum_interval=timedelta(seconds=1))
WAIT = 60.0


def readme_verify() -> Any:
    """The plain-HMAC ``verify`` of the README, run as it is printed there."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```python\n# webhook-verify-recipe\n(.*?)```", text, re.S)
    assert block, "README lost its webhook-verify-recipe block"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)  # noqa: S102 (our own README)
    return namespace["verify"]


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    def __init__(self, status: int = 204) -> None:
        self.status = status
        # While cleared, every request hangs (until set, or two minutes).
        self.answering = threading.Event()
        self.answering.set()
        self.port = free_port()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/erp?token=not-a-secret"

    def received(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                receiver.answering.wait(120)
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def fast_webhooks() -> Policies:
    """The worker's policies: callbacks retried within a second instead of minutes."""
    return Policies(webhook_retry=FAST_RETRY)


def with_webhook(ledger: Ledger, target: Target, url: str) -> str:
    """Give the target's connection a webhook; returns the secret."""
    secret = new_secret()
    config = parse_connection_config({**target.config, "webhook_url": url, "webhook_secret": secret})
    ledger.update_connection_config(target.connection_id, config_to_storable(config))
    return secret


def types(requests: list[Request]) -> list[tuple[str, int]]:
    return [(r.json()["type"], r.json()["attempt"]) for r in requests]


async def test_signed_events_arrive_in_order_and_verify(
    client: Client, run_worker, fs_target, ledger, fast_webhooks, dropzone_cli_in_process
):
    target = fs_target
    receiver = Receiver(status=200).start()
    secret = with_webhook(ledger, target, receiver.url)
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    try:
        async with run_worker(client, policies=fast_webhooks) as queue:
            await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
            first = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
            write_ack_atomically(target.ack_dir, f"error_{first.filename}", error_body("INVALID_CUSTOMER"))
            await wait_for_state(client, did, lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal")
            assert await retry_export(client, did, reason="customer fixed") == 2
            second = await wait_for_state(client, did, lambda s: s.attempt == 2 and s.waiting_for == "ack")
            write_ack_atomically(target.ack_dir, f"ack_{second.filename}", ack_body("SO-HOOK-2"))
            result = await asyncio.wait_for(export_handle(client, did).result(), WAIT)
            history = await export_handle(client, did).fetch_history()
            shown = await dropzone_cli_in_process("status", did, "--json", env={"DROPZONE_TASK_QUEUE": queue})
    finally:
        receiver.stop()
    assert result.status == "ACKED" and result.erp_order_id == "SO-HOOK-2"
    received = receiver.received()
    assert types(received) == [
        ("export.sent", 1), ("export.failed", 1), ("export.retry_started", 2), ("export.sent", 2), ("export.acked", 2),
    ]
    verify = readme_verify()
    rows = {r.attempt: r for r in ledger.list_exports(draft_order_id=uuid.UUID(did))}
    for request in received:
        event = Webhook(secret).verify(request.body, request.headers)  # the library's check
        assert verify(secret, request.headers, request.body)  # the README's recipe
        assert request.headers["webhook-id"] == event["event_id"]
        assert request.path == "/hooks/erp?token=not-a-secret"
        assert event["draft_order_id"] == did and event["export_id"] == str(rows[event["attempt"]].id)
    # A wrong secret or a changed body does not verify.
    assert not verify(new_secret(), received[0].headers, received[0].body)
    assert not verify(secret, received[0].headers, received[0].body.replace(b"export.sent", b"export.acked"))
    events = [r.json() for r in received]
    assert events[1]["status"] == "FAILED" and events[1]["error"]["code"] == "INVALID_CUSTOMER"
    assert events[4]["status"] == "ACKED" and events[4]["erp_order_id"] == "SO-HOOK-2" and events[4]["error"] is None
    assert len({e["event_id"] for e in events}) == 5
    # Both SENT events went out from the deliveries themselves (DeliverInput.sent_callback), under the
    # id every try of them shares; FAILED and the retry's start through the run's queue (activities);
    # ACKED as the closing run's local activity.
    assert [e["event_id"] for e in events if e["type"] == "export.sent"] == [str(sent_event_id(rows[a].id)) for a in (1, 2)]
    scheduled = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                 if e.HasField("activity_task_scheduled_event_attributes")]
    assert scheduled.count("send_webhook") == 2 and scheduled.count("deliver") == 2
    assert [e["occurred_at"] for e in events] == sorted(e["occurred_at"] for e in events)
    # Recorded: every event DELIVERED once, with the receiver's status; shown by `dropzone status`.
    recorded = WebhookEvents(ledger).for_draft(uuid.UUID(did))
    assert [(r.event_type, str(r.status), r.delivery_attempts, r.response_status) for r in recorded] == [
        (e["type"], "DELIVERED", 1, 200) for e in events
    ]
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)["webhook_events"]
    assert [(e["event_type"], e["status"]) for e in listed] == [(e["type"], "DELIVERED") for e in events]
    assert secret not in shown.stdout + shown.stderr
    # The secret never enters the history; the run replays.
    assert secret.encode() not in history.to_json().encode()
    await Replayer(workflows=[ExportOrderWorkflow], data_converter=TEST_DATA_CONVERTER).replay_workflow(history)
    if os.environ.get("DROPZONE_RECORD_HISTORIES") == "1":  # replayed by tests/test_replay.py from then on
        (HISTORIES / "webhooks_failed_then_retried_by_update.json").write_text(history.to_json(), encoding="utf-8")


async def test_a_receiver_that_is_down_gets_the_events_once_back(
    client: Client, run_worker, fs_target, ledger, fast_webhooks, dropzone_cli_in_process
):
    target = fs_target
    receiver = Receiver(status=204)  # not started: connections are refused
    secret = with_webhook(ledger, target, receiver.url)
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    callbacks = WebhookEvents(ledger)
    try:
        async with run_worker(client, policies=fast_webhooks) as queue:
            started = time.monotonic()
            await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
            state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
            write_ack_atomically(target.ack_dir, f"ack_{state.filename}", ack_body("SO-DOWN"))
            acked = await wait_for_state(client, did, lambda s: s.status == "ACKED")
            export_took = time.monotonic() - started
            row = ledger.get_export(acked.export_id)
            assert row.status == "ACKED" and row.erp_order_id == "SO-DOWN"
            # The export is done while its first callback is still being retried.
            await eventually(
                lambda: [(e.status, e.delivery_attempts >= 3) for e in callbacks.for_draft(uuid.UUID(did))]
                == [("PENDING", True)],
                timeout=WAIT,
                what="the SENT callback retried while the receiver is down",
            )
            pending = callbacks.for_draft(uuid.UUID(did))[0]
            assert pending.event_type == "export.sent" and "cannot connect" in (pending.last_error or "")
            assert pending.last_error and "token" not in pending.last_error  # the URL's query is not shown
            env = {"DROPZONE_TASK_QUEUE": queue}
            shown = await dropzone_cli_in_process("status", did, env=env)
            assert shown.returncode == 0, shown.stderr
            assert re.search(r"^1\texport\.sent\tPENDING\t\d+\t\tcannot connect|^1\texport\.sent\tPENDING\t\d+\t\t"
                             r"http://127\.0\.0\.1:\d+/hooks/erp: cannot connect", shown.stdout, re.M), shown.stdout
            # ACKED while the run is still open (it waits for its callbacks): a retry is refused.
            with pytest.raises(RetryRejected) as refused:
                await retry_export(client, did)
            assert "ACKED, not FAILED (ERP order SO-DOWN)" in refused.value.reason
            assert receiver.received() == []

            receiver.start()
            result = await asyncio.wait_for(export_handle(client, did).result(), WAIT)
    finally:
        receiver.stop()
    assert result.status == "ACKED"
    assert export_took < WAIT
    received = receiver.received()
    assert types(received) == [("export.sent", 1), ("export.acked", 1)]
    for request in received:
        Webhook(secret).verify(request.body, request.headers)
    recorded = callbacks.for_draft(uuid.UUID(did))
    assert [(r.event_type, str(r.status)) for r in recorded] == [("export.sent", "DELIVERED"), ("export.acked", "DELIVERED")]
    assert recorded[0].delivery_attempts >= 3 and recorded[0].last_error is None
    assert len(list(target.export_dir.glob(f"sales_order_{did[:8]}_*.json"))) == 1


async def test_a_receiver_answering_500_forever_does_not_keep_the_export_from_acked(
    client: Client, run_worker, fs_target, ledger, fast_webhooks
):
    short_window = replace(fast_webhooks, webhook_give_up_after=timedelta(seconds=4), webhook_last_chance=timedelta(seconds=1))
    target = fs_target
    receiver = Receiver(status=500).start()
    with_webhook(ledger, target, receiver.url)
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    try:
        async with run_worker(client, policies=short_window) as queue:
            await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
            state = await wait_for_state(client, did, lambda s: s.waiting_for == "ack")
            write_ack_atomically(target.ack_dir, f"ack_{state.filename}", ack_body("SO-500"))
            await wait_for_state(client, did, lambda s: s.status == "ACKED")
            # The run closes once the callbacks are given up (their window is 4 s here).
            result = await asyncio.wait_for(export_handle(client, did).result(), WAIT)
    finally:
        receiver.stop()
    assert result.status == "ACKED" and result.erp_order_id == "SO-500"
    assert [(r.attempt, str(r.status)) for r in ledger.list_exports(draft_order_id=uuid.UUID(did))] == [(1, "ACKED")]
    received = receiver.received()
    ids = [r.headers["webhook-id"] for r in received]
    sent_id = ids[0]
    # Every try of one event carries the same id; the ACKED event comes only after the SENT one ended.
    assert ids.count(sent_id) >= 2 and ids[: ids.count(sent_id)] == [sent_id] * ids.count(sent_id)
    recorded = WebhookEvents(ledger).for_draft(uuid.UUID(did))
    assert [(r.event_type, str(r.status)) for r in recorded] == [("export.sent", "GAVE_UP"), ("export.acked", "GAVE_UP")]
    assert all(r.response_status == 500 and "answered HTTP 500" in (r.last_error or "") for r in recorded)
    assert recorded[0].delivery_attempts == ids.count(sent_id)


async def test_a_hanging_receiver_leaves_the_activity_slots_to_the_exports(
    client: Client, run_worker, target_without_acks, ledger, fast_webhooks
):
    """Two activity slots for exports, a receiver that never answers (our request timeout: a
    minute): the callbacks wait on their own worker's slot (webhook_max_in_flight=1, their own
    task queue), so every export is delivered meanwhile."""
    one_slot = replace(fast_webhooks, webhook_request_timeout=timedelta(seconds=60), webhook_max_in_flight=1)
    target = target_without_acks
    receiver = Receiver(status=204).start()
    receiver.answering.clear()
    with_webhook(ledger, target, receiver.url)
    drafts = [make_draft(org_id=target.org_id) for _ in range(3)]
    try:
        async with run_worker(client, max_concurrent_activities=2, policies=one_slot) as queue:
            started = time.monotonic()
            for draft in drafts:
                await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
            for draft in drafts:
                await wait_for_state(client, draft["draft_order_id"], lambda s: s.status == "SENT", timeout=WAIT)
            all_sent_after = time.monotonic() - started
            assert receiver.received(), "the receiver was never called"
            receiver.answering.set()
            results = await asyncio.gather(
                *(asyncio.wait_for(export_handle(client, d["draft_order_id"]).result(), WAIT) for d in drafts)
            )
    finally:
        receiver.answering.set()
        receiver.stop()
    # Well before a hung request could have given a slot back.
    assert all_sent_after < 45, all_sent_after
    assert [r.status for r in results] == ["SENT"] * 3
    for draft in drafts:
        recorded = WebhookEvents(ledger).for_draft(uuid.UUID(draft["draft_order_id"]))
        assert [(r.event_type, str(r.status)) for r in recorded] == [("export.sent", "DELIVERED")]
