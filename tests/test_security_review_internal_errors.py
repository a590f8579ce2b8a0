"""Issue 11 item 4: errors that are not ours never reach Temporal (or the log) with their text.

PostgreSQL is made to refuse one value the ERP wrote: a trigger on this test's
connection's rows raises an error that quotes the new ``erp_order_id`` (as
PostgreSQL's own messages quote values: "invalid input syntax … "x"",
"Failing row contains (…)"). The ERP's ack carries a sentinel as its order id,
so the real ack poll on the real worker hits a ``DBAPIError`` whose message,
statement parameters and cause all hold the sentinel.

Then the run's whole history (JSON and every event's raw bytes), the pending
poll's last failure with its stack trace (what ``temporal workflow describe``
shows), the query answer, the ledger row and every log record of the worker
are searched: the sentinel is nowhere. The failure is ``INTERNAL_ERROR`` naming
the exception's type, with no cause attached; the worker's log has the type,
the frames and the SQLSTATE. And the engine hides statement parameters
(``hide_parameters=True``) in every DBAPIError's text.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client

from dropzone.ledger import Ledger
from starter.api import cancel_export, export_handle, start_export
from tests.conftest import Target
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically
from tests.test_corpus_acks import open_export
from tests.test_long_wait import set_ack_timing
from tests.test_security_secrets import all_logs, find_leaks, history_haystacks  # noqa: F401 (fixture)

WAIT = 120.0
# The ack poll retries a retryable INTERNAL_ERROR each poll interval until the ack timeout ends it.
ACK_TIMEOUT_SECONDS = 8
QUOTED = "quoted-"  # order ids the trigger quotes in its error message
HIDDEN = "hidden-"  # order ids it refuses without quoting them


@pytest.fixture
def refusing_database(ledger: Ledger, fs_target: Target) -> Iterator[None]:
    """PostgreSQL refuses this connection's order ids that start with QUOTED or HIDDEN."""
    name = f"refuse_{fs_target.connection_id.hex}"
    with ledger.engine.begin() as conn:
        conn.execute(text(f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.erp_order_id LIKE '{QUOTED}%' THEN
                    RAISE EXCEPTION 'erp order id % refused', NEW.erp_order_id
                        USING DETAIL = 'refused value: ' || NEW.erp_order_id;
                END IF;
                RAISE EXCEPTION 'erp order id refused';
            END $$
        """))
        conn.execute(text(f"""
            CREATE TRIGGER {name} BEFORE UPDATE ON erp_export FOR EACH ROW
            WHEN (NEW.erp_connection_id = '{fs_target.connection_id}'
                  AND (NEW.erp_order_id LIKE '{QUOTED}%' OR NEW.erp_order_id LIKE '{HIDDEN}%'))
            EXECUTE FUNCTION {name}()
        """))
    try:
        yield
    finally:
        with ledger.engine.begin() as conn:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON erp_export"))
            conn.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))


def test_database_errors_never_show_statement_parameters(ledger, fs_target, refusing_database):
    record = open_export(ledger, fs_target)
    sentinel = f"{HIDDEN}{uuid.uuid4().hex}"
    with pytest.raises(sa_exc.DBAPIError) as caught:
        ledger.mark_acked(record.id, erp_order_id=sentinel, acked_at=datetime.now(UTC))
    assert "erp order id refused" in str(caught.value)  # the statement did reach PostgreSQL
    assert sentinel not in str(caught.value)
    assert "hide_parameters=True" in str(caught.value)
    assert ledger.get_export(record.id).status == "SENT"


def _failures(message: Message) -> Iterator[Failure]:
    """Every Failure anywhere inside a protobuf message (events, pending activities)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            items = [value]
        else:  # a repeated field, or a map (its values)
            items = list(value.values()) if hasattr(value, "values") else list(value)
        for item in items:
            if isinstance(item, Failure):
                yield item
            elif isinstance(item, Message):
                yield from _failures(item)


async def _decoded(client: Client, failure: Failure) -> str:
    """A failure as anyone with the payload keys reads it: messages, stack traces, causes."""
    copy = Failure()
    copy.CopyFrom(failure)
    error: BaseException | None = await client.data_converter.decode_failure(copy)
    texts = []
    while error is not None:
        decoded = getattr(error, "failure", None)
        texts += [type(error).__name__, str(error), decoded.stack_trace if decoded is not None else ""]
        error = error.__cause__
    return "\n".join(texts)


async def _pending_poll_failure(client: Client, draft_id: str) -> tuple[Failure, Message]:
    """The pending poll's last failure once it is an INTERNAL_ERROR (the poll retries it)."""
    handle = export_handle(client, draft_id)
    deadline = time.monotonic() + WAIT
    while True:
        described = await handle.describe()
        for pending in described.raw_description.pending_activities:
            failure = pending.last_failure
            if failure.application_failure_info.type == "INTERNAL_ERROR":
                return failure, described.raw_description
        assert time.monotonic() < deadline, "the poll never failed with INTERNAL_ERROR"
        await asyncio.sleep(0.2)


@pytest.mark.asyncio(loop_scope="session")
async def test_an_unexpected_error_reaches_history_as_its_type_only(
    client: Client, run_worker, fs_target, ledger, refusing_database, all_logs  # noqa: F811
):
    set_ack_timing(ledger, fs_target, ack_timeout_seconds=ACK_TIMEOUT_SECONDS, poll_interval_seconds=1)
    sentinel = f"{QUOTED}{uuid.uuid4().hex}"
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
        waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack", timeout=WAIT)
        write_ack_atomically(fs_target.ack_dir, f"ack_{waiting.filename}", ack_body(sentinel))
        pending_failure, description = await _pending_poll_failure(client, did)
        failed = await wait_for_state(
            client, did, lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal", timeout=WAIT
        )
        await cancel_export(client, did, reason="test done")
        await asyncio.wait_for(export_handle(client, did).result(), WAIT)

    # What the run and the operator see: one generic code, the exception's type, nothing else.
    assert failed.last_error is not None and failed.last_error.code == "INTERNAL_ERROR"
    shown = re.fullmatch(r"internal error \((\w+)\); details are in the worker log", failed.last_error.message)
    assert shown is not None, failed.last_error.message
    type_name = shown.group(1)  # SQLAlchemy's wrapper of psycopg's RaiseException (P0001)
    row = ledger.get_export(waiting.export_id)
    assert row.status == "FAILED" and row.erp_order_id is None
    assert (row.error_json or {}).get("code") == "INTERNAL_ERROR"
    assert row.error_json["message"] == failed.last_error.message
    assert failed.last_error.message in await _decoded(client, pending_failure)
    assert not pending_failure.HasField("cause")

    history = await export_handle(client, did).fetch_history()
    [poll_failed] = [
        e.activity_task_failed_event_attributes.failure
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert poll_failed.application_failure_info.type == "INTERNAL_ERROR"
    assert not poll_failed.application_failure_info.non_retryable  # retried with backoff, like any bug
    assert not poll_failed.HasField("cause")

    haystacks = await history_haystacks(client, did)
    haystacks["describe while the poll retried (bytes)"] = description.SerializeToString()
    # Payloads may be encrypted in history: search the failures as they read decoded, too.
    failures = [f for e in history.events for f in _failures(e)] + list(_failures(description))
    assert len(failures) >= 2  # the pending poll's last failure, the poll's ActivityTaskFailed
    for n, failure in enumerate(failures):
        haystacks[f"failure {n} (decoded)"] = await _decoded(client, failure)
    haystacks["query answer"] = failed.model_dump_json()
    haystacks["ledger row"] = row.model_dump_json()
    haystacks.update({f"log record {n}": t for n, t in enumerate(all_logs.texts)})
    assert find_leaks(haystacks, [sentinel, sentinel.removeprefix(QUOTED)]) == []

    # The worker's log says what happened, for a developer: type, SQLSTATE, frames.
    details = [t for t in all_logs.texts if "'error_chain'" in t]
    assert details, "the unexpected exception was not logged"
    assert f"'sqlalchemy.exc.{type_name}'" in details[0] and "'sqlstate': 'P0001'" in details[0]
    assert "repository.py" in details[0]  # the frame where the ledger ran the statement
