"""Security review, item 10: input that used to be accepted and must not be.

* ``org_slug`` is a slug: lower-case letters, digits and hyphens (``../../x``
  is refused, naming the field; the bad-draft corpus has it too:
  tests/data/bad_drafts/org_slug_path_traversal.json).
* A connection deactivated with ``dropzone connections update ID --deactivate``
  gets no new attempt: the export FAILs with the permanent
  ``CONNECTION_INACTIVE`` naming the connection, nothing is rendered, stored or
  written to the dropzone. Its ack listener stops looking into ``ack_path``
  (its state shows ``CONNECTION_INACTIVE``): an ERP answer written meanwhile is
  not taken, until ``--activate``; then a retry delivers again.

Real worker on the Temporal dev server, PostgreSQL, SeaweedFS, a filesystem
dropzone; the CLI runs as an operator runs it.
"""

from __future__ import annotations

import contextlib
import json
import uuid

import pytest
from temporalio.client import Client

from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import stream_validated_export, validate_draft
from dropzone.contracts import ListenerState
from starter.api import export_handle, export_status, retry_export, start_export
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically
from tests.test_ack_listener import listener_state
from workflows import policies

WAIT = 90.0


@pytest.mark.parametrize("slug", ["acme", "acme-gmbh", "muster-2025", "a", "7-eleven"])
def test_a_slug_is_accepted(slug):
    assert validate_draft({**make_draft(org_id=uuid.uuid4()), "org_slug": slug}).org_slug == slug


@pytest.mark.parametrize("slug", ["../../x", "acme/../other", "Acme", "acme gmbh", "acme_gmbh", "-acme", "acme.de", "ä", "acme\n"])
def test_a_slug_that_is_not_one_is_refused_naming_the_field(slug):
    with pytest.raises(InvalidDraftError) as caught:
        validate_draft({**make_draft(org_id=uuid.uuid4()), "org_slug": slug})
    assert caught.value.fields == ["org_slug"]
    assert caught.value.message == (
        "invalid draft: org_slug: must be lower-case letters, digits and hyphens (a slug such as acme-gmbh)"
    )


def test_a_large_draft_by_reference_has_the_same_slug_rule():
    draft = {**make_draft(org_id=uuid.uuid4(), lines=3), "org_slug": "../../x"}
    with pytest.raises(InvalidDraftError) as caught:
        stream_validated_export(bytearray(json.dumps(draft).encode()))  # the draft_ref path
    assert caught.value.fields == ["org_slug"]


def _inactive(state: ListenerState) -> bool:
    return state.last_error is not None and state.last_error.code == "CONNECTION_INACTIVE"


def _written(target) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.name for d in (target.export_dir, target.ack_dir) for p in d.rglob("*"))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_deactivated_connection_gets_no_attempt_and_no_poll(
    dropzone_cli, dropzone_cli_in_process, client: Client, run_worker, fs_target, ledger
):
    target, cid = fs_target, str(fs_target.connection_id)

    # The operator's switch, as a real process; `connections list` shows it.
    switched = await dropzone_cli("connections", "update", cid, "--deactivate")
    assert switched.returncode == 0, switched.stderr
    assert f"connection {cid} deactivated" in switched.stdout
    assert ledger.get_connection(target.connection_id).active is False
    listed = json.loads((await dropzone_cli_in_process("connections", "list", "--json")).stdout)
    assert [c["active"] for c in listed if c["id"] == cid] == [False]

    refused = make_draft(org_id=target.org_id)
    waiting = make_draft(org_id=target.org_id)
    try:
        await _deactivated_then_active(dropzone_cli_in_process, client, run_worker, target, ledger, refused, waiting)
    finally:
        with contextlib.suppress(Exception):  # the listener outlives exports; not this test
            await client.get_workflow_handle(policies.listener_id_for(target.connection_id)).terminate()


async def _deactivated_then_active(cli, client, run_worker, target, ledger, refused, waiting) -> None:  # type: ignore[no-untyped-def]
    cid = str(target.connection_id)
    dropzone_cli_in_process = cli
    async with run_worker(client) as queue:
        # A new export on the inactive connection: FAILED at once, permanent, nothing written.
        await start_export(client, erp_connection_id=target.connection_id, draft=refused, task_queue=queue)
        failed = await wait_for_state(
            client, refused["draft_order_id"], lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal",
            timeout=WAIT,
        )
        assert failed.last_error is not None and failed.last_error.code == "CONNECTION_INACTIVE"
        assert cid in failed.last_error.message and "inactive" in failed.last_error.message
        assert failed.attempt == 0 and failed.filename is None
        assert _written(target) == []
        assert ledger.list_exports(org_id=target.org_id) == []
        history = await export_handle(client, refused["draft_order_id"]).fetch_history()
        scheduled = [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
        ]
        assert scheduled == ["open_attempt"]  # nothing rendered, stored or delivered
        [opened] = [e for e in history.events if e.HasField("activity_task_failed_event_attributes")]
        failure = opened.activity_task_failed_event_attributes.failure
        assert failure.application_failure_info.type == "CONNECTION_INACTIVE"
        assert failure.application_failure_info.non_retryable
        started = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
        assert [e.activity_task_started_event_attributes.attempt for e in started] == [1]  # not retried

        # Active again: an export waits for its ack. Deactivated while it waits, the
        # connection's ack listener stops looking, and says why.
        assert (await dropzone_cli_in_process("connections", "update", cid, "--activate")).returncode == 0
        await start_export(client, erp_connection_id=target.connection_id, draft=waiting, task_queue=queue)
        sent = await wait_for_state(client, waiting["draft_order_id"], lambda s: s.waiting_for == "ack", timeout=WAIT)
        assert (await dropzone_cli_in_process("connections", "update", cid, "--deactivate")).returncode == 0
        inactive = await listener_state(client, target.connection_id, _inactive, timeout=WAIT)
        assert inactive.last_error is not None and cid in inactive.last_error.message
        # The ERP answers now: two more looks (one began after the answer) take nothing.
        write_ack_atomically(target.ack_dir, f"ack_{sent.filename}", ack_body("SO-WHILE-INACTIVE"))
        # A look refused for the inactive connection lists nothing; it only renews the error.
        for _ in range(2):
            before = (await listener_state(client, target.connection_id, _inactive)).last_error_at
            await listener_state(
                client, target.connection_id, lambda s: _inactive(s) and s.last_error_at != before, timeout=WAIT
            )
        assert ledger.get_export(sent.export_id).status == "SENT"
        assert (target.ack_dir / f"ack_{sent.filename}").is_file()
        assert (await export_status(client, waiting["draft_order_id"])).waiting_for == "ack"
        assert _written(target) == sorted([sent.filename, f"ack_{sent.filename}"])

        # --activate: the answer is taken at the next look.
        assert (await dropzone_cli_in_process("connections", "update", cid, "--activate")).returncode == 0
        acked = await wait_for_state(client, waiting["draft_order_id"], lambda s: s.status == "ACKED", timeout=WAIT)
        assert acked.erp_order_id == "SO-WHILE-INACTIVE"

        # The operator's retry of the refused export: a new attempt is delivered.
        await retry_export(client, refused["draft_order_id"], reason="connection active again")
        again = await wait_for_state(
            client, refused["draft_order_id"], lambda s: s.attempt == 1 and s.waiting_for == "ack", timeout=WAIT
        )
        assert (target.export_dir / str(again.filename)).is_file()
