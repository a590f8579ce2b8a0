"""Issue 11 item 10: input that used to be accepted and must not be.

* ``org_slug`` is a slug: lower-case letters, digits and hyphens (``../../x``
  is refused, naming the field; the bad-draft corpus has it too:
  tests/data/bad_drafts/org_slug_path_traversal.json).
* A connection deactivated with ``dropzone connections update ID --deactivate``
  gets no new attempt and no ack poll: the export FAILs with the permanent
  ``CONNECTION_INACTIVE`` naming the connection, nothing is written to the
  dropzone or the object store; ``--activate`` and a retry deliver again.

Real worker on the Temporal dev server, PostgreSQL, SeaweedFS, a filesystem
dropzone; the CLI runs as an operator runs it.
"""

from __future__ import annotations

import json
import uuid

import pytest
from temporalio.client import Client

from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import validate_draft
from starter.api import export_handle, retry_export, start_export
from tests.helpers import make_draft, wait_for_state

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

        # Active again: an export waits for its ack; deactivated while it waits, its poll stops.
        assert (await dropzone_cli_in_process("connections", "update", cid, "--activate")).returncode == 0
        await start_export(client, erp_connection_id=target.connection_id, draft=waiting, task_queue=queue)
        sent = await wait_for_state(client, waiting["draft_order_id"], lambda s: s.waiting_for == "ack", timeout=WAIT)
        assert (await dropzone_cli_in_process("connections", "update", cid, "--deactivate")).returncode == 0
        stopped = await wait_for_state(
            client, waiting["draft_order_id"], lambda s: s.status == "FAILED", timeout=WAIT
        )
        assert stopped.last_error is not None and stopped.last_error.code == "CONNECTION_INACTIVE"
        row = ledger.get_export(sent.export_id)
        assert row.status == "FAILED" and row.error_json is not None and row.error_json["code"] == "CONNECTION_INACTIVE"
        assert _written(target) == [sent.filename]  # the one file delivered while it was active

        # --activate, then the operator's retry: a new attempt is delivered.
        assert (await dropzone_cli_in_process("connections", "update", cid, "--activate")).returncode == 0
        await retry_export(client, refused["draft_order_id"], reason="connection active again")
        again = await wait_for_state(
            client, refused["draft_order_id"], lambda s: s.attempt == 1 and s.waiting_for == "ack", timeout=WAIT
        )
        assert (target.export_dir / str(again.filename)).is_file()
