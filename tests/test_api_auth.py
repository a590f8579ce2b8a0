"""Tokens and tenancy of the HTTP API: a token sees and pushes only its organisation's drafts,
exports and connections (another organisation's ids answer 404, like ids that do not exist);
a missing, unknown or revoked token gets 401. Tokens are made with the real CLI."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from sqlalchemy import text

from tests.conftest import make_target
from tests.helpers import make_draft
from tests.test_api_support import (  # noqa: F401  (fixture)
    api_server,
    assert_problem,
    attempts,
    dropzone_files,
    push_body,
    wait_for_attempt,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_another_organisations_token_gets_404_on_push_status_list_and_retry(
    client, run_worker, api_server, fs_target, ledger, request, tmp_path
):
    ours, theirs = fs_target, make_target("filesystem", request, ledger, tmp_path / "b")
    draft = make_draft(org_id=ours.org_id)
    did = draft["draft_order_id"]
    async with run_worker(client) as queue, api_server(queue) as api:
        async with api.client(api.token_for(ours.org_id)) as mine, api.client(api.token_for(theirs.org_id)) as other:
            assert (await mine.post(f"/draft-orders/{did}/push", json=push_body(ours.connection_id, draft))).status_code == 202
            sent = await wait_for_attempt(mine, did, 1, ("SENT",))

            # Our draft on our connection, pushed with their token.
            pushed = await other.post(f"/draft-orders/{did}/push", json=push_body(ours.connection_id, draft))
            assert str(ours.connection_id) in assert_problem(pushed, 404, "not-found")["detail"]
            # Their own connection, but our draft's id: still not theirs.
            hijack = {**draft, "org_id": str(theirs.org_id)}
            pushed = await other.post(f"/draft-orders/{did}/push", json=push_body(theirs.connection_id, hijack))
            assert did in assert_problem(pushed, 404, "not-found")["detail"]
            assert_problem(await other.get(f"/draft-orders/{did}/exports"), 404, "not-found")
            retried = await other.post(f"/draft-orders/{did}/retry-push", json={"reason": "not mine"})
            assert_problem(retried, 404, "not-found")
            listed = await other.get("/exports")
            assert listed.status_code == 200 and listed.json()["exports"] == []
            assert listed.json()["filters"]["org_id"] == str(theirs.org_id)

            ours_listed = (await mine.get("/exports")).json()["exports"]
            assert [e["draft_order_id"] for e in ours_listed] == [did]
            assert [a["attempt"] for a in await attempts(mine, did)] == [1]
    # Nothing of theirs was written anywhere, and ours has its one file.
    assert dropzone_files(theirs.export_dir) == [] and ledger.list_exports(org_id=theirs.org_id) == []
    assert dropzone_files(ours.export_dir) == [sent["filename"]]


async def test_no_unknown_or_revoked_token_gets_401(api_server, fs_target, dropzone_cli_in_process, ledger):
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    created = await dropzone_cli_in_process("tokens", "create", "--org", str(fs_target.org_id), "--name", "shop backend")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("dzt_") and "\n" not in token and "not shown again" in created.stderr

    async with api_server() as api:
        routes = [
            ("POST", f"/draft-orders/{did}/push", push_body(fs_target.connection_id, draft)),
            ("POST", f"/draft-orders/{did}/retry-push", {"reason": "x"}),
            ("GET", f"/draft-orders/{did}/exports", None),
            ("GET", "/exports", None),
        ]
        async with api.client() as anonymous, api.client("dzt_" + "x" * 43) as unknown, api.client(token) as good:
            for method, path, body in routes:
                for http in (anonymous, unknown):
                    response = await http.request(method, path, json=body)
                    assert_problem(response, 401, "unauthorized")
                    assert response.headers["www-authenticate"].startswith("Bearer")
            # The good token passes authentication (this draft has no export yet).
            assert_problem(await good.get(f"/draft-orders/{did}/exports"), 404, "not-found")
            assert (await good.get("/exports")).status_code == 200

            listed = await dropzone_cli_in_process("tokens", "list", "--org", str(fs_target.org_id), "--json")
            (record,) = [r for r in json.loads(listed.stdout) if r["name"] == "shop backend"]
            assert token not in listed.stdout and record["revoked_at"] is None
            revoked = await dropzone_cli_in_process("tokens", "revoke", record["id"])
            assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
            for method, path, body in routes:
                assert_problem(await good.request(method, path, json=body), 401, "unauthorized")
            # /healthz and /readyz need no token.
            assert (await anonymous.get("/healthz")).status_code == 200

    # Only the hash is stored: no column holds the token itself.
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_token WHERE id = :id"), {"id": uuid.UUID(record["id"])}).mappings().all()
    assert rows[0]["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(value) for value in rows[0].values())
    assert rows[0]["revoked_at"] is not None
    gone = await dropzone_cli_in_process("tokens", "revoke", str(uuid.uuid4()))
    assert gone.returncode == 2 and "not found" in gone.stderr and "Traceback" not in gone.stderr
