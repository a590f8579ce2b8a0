"""Large drafts over HTTP: above the inline limit a push goes by reference (draft_ref in object
storage) on its own; past the in-memory spool the body is spooled to disk and the draft is read
from there. A bad line near the end of a large draft is named, and nothing is stored."""

from __future__ import annotations

import json

import pytest

from dropzone.export_v1 import render_export, validate_draft
from starter.http.body import SPOOL_IN_MEMORY
from tests.helpers import make_draft
from tests.test_api_support import api_server, assert_problem, push_body, wait_for_attempt  # noqa: F401  (fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _draft_keys(object_store, org_id) -> list[str]:  # type: ignore[no-untyped-def]
    listed = object_store._client.list_objects_v2(Bucket=object_store.bucket, Prefix=f"drafts/{org_id}/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def test_large_drafts_go_by_reference_and_a_bad_line_is_named(
    client, run_worker, api_server, fs_target, object_store, ledger
):
    target = fs_target
    medium = make_draft(org_id=target.org_id, lines=2_000)  # ~400 KB: above the inline limit
    large = make_draft(org_id=target.org_id, lines=50_000)  # past the in-memory spool
    assert len(json.dumps(large)) > SPOOL_IN_MEMORY
    bad = make_draft(org_id=target.org_id, lines=50_000)
    bad["lines"][49_990]["qty"] = -1
    async with run_worker(client) as queue, api_server(queue) as api, api.client(api.token_for(target.org_id)) as http:
        response = await http.post(f"/draft-orders/{bad['draft_order_id']}/push",
                                   json=push_body(target.connection_id, bad))
        problem = assert_problem(response, 422, "invalid-draft")
        assert [e["field"] for e in problem["errors"]] == ["draft.lines[49990].qty"]
        assert _draft_keys(object_store, target.org_id) == []

        for draft in (medium, large):
            did = draft["draft_order_id"]
            response = await http.post(f"/draft-orders/{did}/push", json=push_body(target.connection_id, draft))
            assert response.status_code == 202, response.text
            (key,) = [k for k in _draft_keys(object_store, target.org_id) if f"/{did}/" in k]
            sent = await wait_for_attempt(http, did, 1, ("SENT",))
            assert (target.export_dir / sent["filename"]).read_bytes() == render_export(validate_draft(draft))
    assert ledger.list_exports(draft_order_id=bad["draft_order_id"]) == []
