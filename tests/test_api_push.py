"""Push and retry-push through the HTTP API alone: a real uvicorn server, worker, PostgreSQL,
Temporal dev server, SeaweedFS and a filesystem dropzone. The ERP is played by writing its
ack_/error_ files; everything else a backend sees comes over HTTP."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from dropzone.export_v1 import render_export, validate_draft
from tests.helpers import ack_body, error_body, eventually, make_draft, write_ack_atomically
from tests.test_api_support import (  # noqa: F401  (fixture)
    API_DEADLINE,
    api_server,
    assert_problem,
    attempts,
    dropzone_files,
    push_body,
    wait_for_attempt,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_push_to_acked_through_the_api_alone(client, run_worker, api_server, fs_target, ledger, object_store):
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue, api_server(queue) as api:
        async with api.client(api.token_for(target.org_id)) as http:
            response = await http.post(f"/draft-orders/{did}/push", json=push_body(target.connection_id, draft))
            assert response.status_code == 202, response.text
            accepted = response.json()
            assert accepted["workflow_id"] == f"erp-export-{did}" and accepted["started_new"] is True
            assert accepted["status_url"] == f"{api.url}/draft-orders/{did}/exports"

            sent = await wait_for_attempt(http, did, 1, ("SENT",))
            delivered = target.export_dir / sent["filename"]
            assert delivered.read_bytes() == render_export(validate_draft(draft))
            write_ack_atomically(target.ack_dir, f"ack_{sent['filename']}", ack_body("SO-API-1"))

            acked = await wait_for_attempt(http, did, 1, ("ACKED",))
            status = (await http.get(accepted["status_url"])).json()
    assert acked["erp_order_id"] == "SO-API-1" and acked["acked_at"] is not None
    assert status["org_id"] == str(target.org_id) and [a["status"] for a in status["attempts"]] == ["ACKED"]
    row = ledger.get_export(acked["export_id"])
    assert row.status == "ACKED" and row.erp_order_id == "SO-API-1"
    assert object_store.head(row.export_storage_key) is not None
    assert dropzone_files(target.export_dir) == [sent["filename"]]


async def test_double_push_makes_one_run_and_one_file_then_409_unless_force(
    client, run_worker, api_server, fs_target, ledger
):
    target = fs_target
    draft = make_draft(org_id=target.org_id)
    did = draft["draft_order_id"]
    body = push_body(target.connection_id, draft)
    async with run_worker(client) as queue, api_server(queue) as api:
        async with api.client(api.token_for(target.org_id)) as http:
            first, second = await asyncio.gather(
                http.post(f"/draft-orders/{did}/push", json=body), http.post(f"/draft-orders/{did}/push", json=body)
            )
            assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
            assert first.json()["run_id"] == second.json()["run_id"]
            sent = await wait_for_attempt(http, did, 1, ("SENT",))
            again = await http.post(f"/draft-orders/{did}/push", json=body)
            assert again.status_code == 202 and again.json()["run_id"] == first.json()["run_id"]
            assert again.json()["started_new"] is False
            write_ack_atomically(target.ack_dir, f"ack_{sent['filename']}", ack_body())
            await wait_for_attempt(http, did, 1, ("ACKED",))
            assert dropzone_files(target.export_dir) == [sent["filename"]]
            assert len(ledger.list_exports(draft_order_id=uuid.UUID(did))) == 1

            # The run has closed: a push is refused, unless it says force.
            async def closed() -> bool:
                refused = await http.post(f"/draft-orders/{did}/push", json=body)
                return refused.status_code == 409 and refused

            refused = await eventually(closed, timeout=API_DEADLINE, what="the push after the run closed being refused")
            problem = assert_problem(refused, 409, "run-closed")
            assert "force" in problem["detail"]
            assert len(ledger.list_exports(draft_order_id=uuid.UUID(did))) == 1

            forced = await http.post(f"/draft-orders/{did}/push", json={**body, "force": True})
            assert forced.status_code == 202, forced.text
            assert forced.json()["run_id"] != first.json()["run_id"] and forced.json()["started_new"] is True
            # A new run's attempt: the next number, a new row and a new file.
            resent = await wait_for_attempt(http, did, 2, ("SENT",))
            runs = {a["workflow_run_id"] for a in await attempts(http, did)}
    assert runs == {first.json()["run_id"], forced.json()["run_id"]}
    assert resent["workflow_run_id"] == forced.json()["run_id"] and resent["filename"] != sent["filename"]


async def test_retry_push_of_acked_is_409_of_failed_is_202_with_a_new_file(
    client, run_worker, api_server, fs_target, ledger
):
    target = fs_target
    acked_draft, failed_draft = make_draft(org_id=target.org_id), make_draft(org_id=target.org_id)
    acked_id, failed_id = acked_draft["draft_order_id"], failed_draft["draft_order_id"]
    async with run_worker(client) as queue, api_server(queue) as api:
        async with api.client(api.token_for(target.org_id)) as http:
            for draft in (acked_draft, failed_draft):
                pushed = await http.post(f"/draft-orders/{draft['draft_order_id']}/push",
                                         json=push_body(target.connection_id, draft))
                assert pushed.status_code == 202, pushed.text
            sent_ok = await wait_for_attempt(http, acked_id, 1, ("SENT",))
            sent_bad = await wait_for_attempt(http, failed_id, 1, ("SENT",))

            # Still waiting for its ack: not FAILED, so no retry.
            early = await http.post(f"/draft-orders/{failed_id}/retry-push", json={"reason": "too early"})
            assert "FAILED" in assert_problem(early, 409, "retry-refused")["detail"]

            write_ack_atomically(target.ack_dir, f"ack_{sent_ok['filename']}", ack_body("SO-OK"))
            write_ack_atomically(target.ack_dir, f"error_{sent_bad['filename']}", error_body())
            await wait_for_attempt(http, acked_id, 1, ("ACKED",))
            await wait_for_attempt(http, failed_id, 1, ("FAILED",))

            files_before = dropzone_files(target.export_dir)
            refused = await http.post(f"/draft-orders/{acked_id}/retry-push", json={"reason": "why not"})
            assert "ACKED" in assert_problem(refused, 409, "retry-refused")["detail"]

            retried = await http.post(f"/draft-orders/{failed_id}/retry-push", json={"reason": "customer fixed"})
            assert retried.status_code == 202, retried.text
            assert retried.json()["attempt"] == 2
            second = await wait_for_attempt(http, failed_id, 2, ("SENT",))
            write_ack_atomically(target.ack_dir, f"ack_{second['filename']}", ack_body("SO-RETRIED"))
            await wait_for_attempt(http, failed_id, 2, ("ACKED",))
            rows = await attempts(http, failed_id)
    assert second["filename"] != sent_bad["filename"]
    assert dropzone_files(target.export_dir) == sorted([*files_before, second["filename"]])
    assert [(r["attempt"], r["status"]) for r in rows] == [(1, "FAILED"), (2, "ACKED")]
    assert len(ledger.list_exports(draft_order_id=uuid.UUID(acked_id))) == 1
