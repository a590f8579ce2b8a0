"""Security review, item 4: errors that are not ours never reach Temporal (or the log) with their text.

PostgreSQL is made to refuse one value the ERP wrote: a trigger on this test's
connection's rows raises an error that quotes the new ``erp_order_id`` (as
PostgreSQL's own messages quote values: "invalid input syntax … "x"",
"Failing row contains (…)"). The ERP's ack carries a sentinel as its order id,
so the connection's ack listener on the real worker (which records acks with the
ack poll's code) hits a ``DBAPIError`` whose message, statement parameters and
cause all hold the sentinel.

Then the export's and the listener's whole histories (JSON, every event's raw
bytes, and every failure decoded with the payload keys: messages, stack
traces, causes), the listener's description and state, the ledger row and
every log record of the worker
are searched: the sentinel is nowhere. The failure is ``INTERNAL_ERROR`` naming
the exception's type, with no cause attached; the worker's log has the type,
the frames and the SQLSTATE. And the engine hides statement parameters
(``hide_parameters=True``) in every DBAPIError's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client, WorkflowHistory

from dropzone.ledger import Ledger
from starter.api import cancel_export, export_handle, start_export
from tests.conftest import Target
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically
from tests.test_corpus_acks import open_export
from tests.test_ack_listener import listener_state
from tests.test_security_secrets import all_logs, find_leaks, history_haystacks  # noqa: F401 (fixture)
from workflows import policies

WAIT = 120.0
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


def _failed_activities(history: WorkflowHistory, activity_type: str) -> list[Failure]:
    scheduled = {
        e.event_id
        for e in history.events
        if e.activity_task_scheduled_event_attributes.activity_type.name == activity_type
    }
    return [
        e.activity_task_failed_event_attributes.failure
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
        and e.activity_task_failed_event_attributes.scheduled_event_id in scheduled
    ]


@pytest.mark.asyncio(loop_scope="session")
async def test_an_unexpected_error_reaches_history_as_its_type_only(
    client: Client, run_worker, fs_target, ledger, refusing_database, all_logs  # noqa: F811
):
    # The connection's ack listener takes the ack (workflows/ack_listener.py) and
    # records it with the ack poll's code, under translate_errors like every activity.
    sentinel = f"{QUOTED}{uuid.uuid4().hex}"
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    listener = client.get_workflow_handle(policies.listener_id_for(fs_target.connection_id))
    try:
        async with run_worker(client) as queue:
            await start_export(client, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
            waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack", timeout=WAIT)
            write_ack_atomically(fs_target.ack_dir, f"ack_{waiting.filename}", ack_body(sentinel))
            state = await listener_state(
                client, fs_target.connection_id,
                lambda s: s.last_error is not None and s.last_error.code == "INTERNAL_ERROR", timeout=WAIT,
            )
            described = (await listener.describe()).raw_description
            await cancel_export(client, did, reason="test done")
            await asyncio.wait_for(export_handle(client, did).result(), WAIT)
        listener_history = await listener.fetch_history()
    finally:
        with contextlib.suppress(Exception):
            await listener.terminate(reason="test done")

    # What the listener shows an operator: one generic code, the exception's type, nothing else.
    assert state.last_error is not None
    shown = re.fullmatch(r"internal error \((\w+)\); details are in the worker log", state.last_error.message)
    assert shown is not None, state.last_error.message
    type_name = shown.group(1)  # SQLAlchemy's wrapper of psycopg's RaiseException (P0001)
    row = ledger.get_export(waiting.export_id)
    assert row.erp_order_id is None and row.status in ("SENT", "FAILED")  # never recorded

    failed = _failed_activities(listener_history, "scan_ack_path")
    assert failed, "the listener's look never failed"
    for failure in failed:
        assert failure.application_failure_info.type == "INTERNAL_ERROR"
        assert not failure.application_failure_info.non_retryable  # retried with backoff, like any bug
        assert not failure.HasField("cause")
        assert state.last_error.message in await _decoded(client, failure)

    haystacks = await history_haystacks(client, did)
    haystacks["listener history (json)"] = listener_history.to_json()
    for event in listener_history.events:
        haystacks[f"listener event {event.event_id} (bytes)"] = event.SerializeToString()
    haystacks["listener describe (bytes)"] = described.SerializeToString()
    # Payloads may be encrypted in history: search the failures as they read decoded, too.
    export_history = await export_handle(client, did).fetch_history()
    everything = [*export_history.events, *listener_history.events, described]
    failures = [f for message in everything for f in _failures(message)]
    assert len(failures) >= len(failed)
    for n, failure in enumerate(failures):
        haystacks[f"failure {n} (decoded)"] = await _decoded(client, failure)
    haystacks["listener state (query)"] = state.model_dump_json()
    haystacks["ledger row"] = row.model_dump_json()
    haystacks.update({f"log record {n}": t for n, t in enumerate(all_logs.texts)})
    assert find_leaks(haystacks, [sentinel, sentinel.removeprefix(QUOTED)]) == []

    # The worker's log says what happened, for a developer: type, SQLSTATE, frames.
    details = [t for t in all_logs.texts if "'error_chain'" in t]
    assert details, "the unexpected exception was not logged"
    assert f"'sqlalchemy.exc.{type_name}'" in details[0] and "'sqlstate': 'P0001'" in details[0]
    assert "repository.py" in details[0]  # the frame where the ledger ran the statement
