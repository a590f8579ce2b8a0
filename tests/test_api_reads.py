"""`GET /draft-orders/{id}/exports` and `GET /exports` give what `dropzone status --json` and
`dropzone list --json` give (same fields, same values), scoped to the token's organisation."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.helpers import error_body, make_draft, write_ack_atomically
from tests.test_api_support import api_server, assert_problem, push_body, wait_for_attempt  # noqa: F401  (fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TIMES = ("created_at", "sent_at", "acked_at", "updated_at")


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """The CLI prints times with str(), the API in ISO 8601: compare the instants."""
    return {k: (datetime.fromisoformat(v) if k in TIMES and v else v) for k, v in row.items()}


async def test_status_and_list_match_the_cli(client, run_worker, api_server, fs_target, dropzone_cli_in_process):
    target = fs_target
    drafts = [make_draft(org_id=target.org_id) for _ in range(3)]
    async with run_worker(client) as queue, api_server(queue) as api, api.client(api.token_for(target.org_id)) as http:
        for draft in drafts:
            pushed = await http.post(f"/draft-orders/{draft['draft_order_id']}/push",
                                     json=push_body(target.connection_id, draft))
            assert pushed.status_code == 202, pushed.text
        sent = [await wait_for_attempt(http, d["draft_order_id"], 1, ("SENT",)) for d in drafts]
        failing = drafts[0]["draft_order_id"]
        write_ack_atomically(target.ack_dir, f"error_{sent[0]['filename']}", error_body())
        await wait_for_attempt(http, failing, 1, ("FAILED",))

        status = (await http.get(f"/draft-orders/{failing}/exports")).json()
        cli_status = await dropzone_cli_in_process("status", failing, "--json")
        assert cli_status.returncode == 0, cli_status.stderr
        expected = json.loads(cli_status.stdout)
        assert status["draft_order_id"] == expected["draft_order_id"] and status["org_id"] == expected["org_id"]
        assert [_comparable(a) for a in status["attempts"]] == [_comparable(a) for a in expected["attempts"]]
        assert set(status) == set(expected) and status["webhook_events"] == expected["webhook_events"]
        assert status["attempts"][0]["error"]["code"] == "INVALID_CUSTOMER"
        assert status["attempts"][0]["workflow_url"].startswith("http://temporal-ui.test:8233/")

        page1 = (await http.get("/exports", params={"limit": 2})).json()
        page2 = (await http.get("/exports", params={"limit": 2, "page": 2})).json()
        cli_list = await dropzone_cli_in_process("list", "--org", str(target.org_id), "--limit", "2", "--json")
        failed = (await http.get("/exports", params={"status": "FAILED", "since": "1h"})).json()
        none_since = (await http.get("/exports", params={"since": "2999-01-01"})).json()

    expected_page = json.loads(cli_list.stdout)
    assert (page1["page"], page1["limit"], page1["has_more"]) == (1, 2, True)
    assert [_comparable(e) for e in page1["exports"]] == [_comparable(e) for e in expected_page["exports"]]
    assert set(page1["exports"][0]) == set(expected_page["exports"][0])
    assert (page2["has_more"], len(page2["exports"])) == (False, 1)
    listed = {e["draft_order_id"] for e in page1["exports"] + page2["exports"]}
    assert listed == {d["draft_order_id"] for d in drafts}
    assert [e["draft_order_id"] for e in failed["exports"]] == [failing]
    assert failed["filters"]["status"] == "FAILED" and failed["filters"]["since"] is not None
    assert none_since["exports"] == [] and none_since["has_more"] is False
