"""Bad requests to the HTTP API: each gets its own RFC 9457 problem, names every bad field with
the CLI's words, never shows a traceback or an input value, and writes nothing (no workflow,
no ledger row, no object, no file).

The bad-draft corpus (tests/data/bad_drafts/) goes inside a push envelope byte for byte. The
drafts that are not JSON at all (empty, truncated, trailing garbage, not UTF-8) make the whole
body malformed JSON, which is its own problem (400)."""

from __future__ import annotations

import json
import uuid

import pytest
from temporalio.service import RPCError, RPCStatusCode

from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import validate_draft
from tests.helpers import make_draft
from tests.test_api_support import api_server, assert_problem, dropzone_files, push_body  # noqa: F401  (fixture)
from tests.test_corpus_drafts import DATA, ECHO, INDEX

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def _envelope(connection_id: uuid.UUID, raw_draft: bytes) -> bytes:
    return b'{"erp_connection_id": "' + str(connection_id).encode() + b'", "draft": ' + raw_draft + b"}"


def _bucket_keys(object_store) -> list[str]:  # type: ignore[no-untyped-def]
    listed = object_store._client.list_objects_v2(Bucket=object_store.bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def _no_workflow(client, draft_order_id: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        await client.get_workflow_handle(f"erp-export-{draft_order_id}").describe()
    except RPCError as exc:
        return exc.status == RPCStatusCode.NOT_FOUND
    return False


async def test_the_bad_draft_corpus_gets_422_naming_the_clis_fields_and_writes_nothing(
    client, api_server, fs_target, ledger, object_store
):
    keys_before = _bucket_keys(object_store)
    malformed = []
    async with api_server() as api, api.client(api.token_for(fs_target.org_id)) as http:
        for name in sorted(INDEX):
            raw = (DATA / name).read_bytes()
            draft_id = str(uuid.uuid4())
            response = await http.post(
                f"/draft-orders/{draft_id}/push", content=_envelope(fs_target.connection_id, raw),
                headers={"Content-Type": "application/json"},
            )
            assert ECHO not in response.text, name
            # A draft that is not JSON breaks the whole body (msgspec lets invalid UTF-8
            # inside a string through: the draft validator then names it, like the CLI).
            if not _is_json(raw) and response.status_code != 422:
                problem = assert_problem(response, 400, "malformed-json")
                assert problem["detail"].startswith("invalid JSON: "), (name, problem)
                malformed.append(name)
                continue
            problem = assert_problem(response, 422, "invalid-draft")
            with pytest.raises(InvalidDraftError) as cli:  # what `dropzone export` prints after "error: "
                validate_draft(raw)
            assert problem["detail"] == cli.value.message, name
            expected = ["draft" if f == "(document)" else f"draft.{f}" for f in INDEX[name]["fields"]]
            assert sorted(e["field"] for e in problem["errors"]) == sorted(expected), (name, problem)
            for error in problem["errors"]:
                field = error["field"].removeprefix("draft").removeprefix(".") or "(document)"
                assert f"{field}: {error['message'].split('; ')[0]}" in cli.value.message, (name, error)
            assert problem["code"] == "INVALID_DRAFT"
    assert 3 <= len(malformed) <= 5 and len(INDEX) - len(malformed) >= 50, malformed
    assert ledger.list_exports() == []
    assert _bucket_keys(object_store) == keys_before
    assert dropzone_files(fs_target.export_dir) == []
    ids = {json.loads((DATA / n).read_bytes()).get("draft_order_id") for n in INDEX
           if _is_json((DATA / n).read_bytes()) and isinstance(json.loads((DATA / n).read_bytes()), dict)}
    for draft_order_id in filter(None, ids):
        assert await _no_workflow(client, draft_order_id), draft_order_id


async def test_bad_envelopes_name_each_field(client, api_server, fs_target, request, ledger, tmp_path):
    from tests.conftest import make_target

    other = make_target("filesystem", request, ledger, tmp_path / "other")
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    push = f"/draft-orders/{did}/push"
    async with api_server() as api, api.client(api.token_for(fs_target.org_id)) as http:
        response = await http.post(push, json={"draft": draft, "force": "yes", "color": "red"})
        problem = assert_problem(response, 422, "invalid-request")
        assert {e["field"] for e in problem["errors"]} == {"erp_connection_id", "force", "color"}

        response = await http.post(push, json={"erp_connection_id": "not-a-uuid", "draft": draft})
        assert [e["field"] for e in assert_problem(response, 422, "invalid-request")["errors"]] == ["erp_connection_id"]

        response = await http.post(f"/draft-orders/{uuid.uuid4()}/push", json=push_body(fs_target.connection_id, draft))
        assert [e["field"] for e in assert_problem(response, 422, "invalid-request")["errors"]] == ["draft.draft_order_id"]

        # The connection is ours, the draft names another organisation.
        foreign = {**draft, "org_id": str(other.org_id)}
        response = await http.post(push, json=push_body(fs_target.connection_id, foreign))
        problem = assert_problem(response, 422, "invalid-request")
        assert [e["field"] for e in problem["errors"]] == ["draft.org_id"]

        response = await http.post(push, json=[1, 2])
        assert [e["field"] for e in assert_problem(response, 422, "invalid-request")["errors"]] == ["(body)"]

        response = await http.post(f"/draft-orders/{did}/retry-push", json={"reason": ""})
        assert [e["field"] for e in assert_problem(response, 422, "invalid-request")["errors"]] == ["reason"]
        response = await http.get("/exports", params={"status": "LOST", "page": 0, "since": "yesterday"})
        problem = assert_problem(response, 422, "invalid-request")
        assert {e["field"] for e in problem["errors"]} == {"status", "page"}
        response = await http.get("/exports", params={"since": "yesterday"})
        assert [e["field"] for e in assert_problem(response, 422, "invalid-request")["errors"]] == ["since"]
        assert_problem(await http.get("/draft-orders/not-a-uuid/exports"), 422, "invalid-request")
        assert_problem(await http.get("/nowhere"), 404, "not-found")
        assert_problem(await http.delete("/exports"), 405, "method-not-allowed")
    assert ledger.list_exports() == [] and await _no_workflow(client, did)


async def test_malformed_json_wrong_content_type_and_oversized_bodies(client, api_server, fs_target, ledger):
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    push, retry = f"/draft-orders/{did}/push", f"/draft-orders/{did}/retry-push"
    good = json.dumps(push_body(fs_target.connection_id, draft)).encode()
    json_type = {"Content-Type": "application/json"}
    async with api_server(api_max_body_bytes=len(good) + 100) as api, api.client(api.token_for(fs_target.org_id)) as http:
        for path in (push, retry):
            response = await http.post(path, content=b'{"erp_connection_id": "x", "draft": {', headers=json_type)
            assert "line 1 column" in assert_problem(response, 400, "malformed-json")["detail"]
            for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {"Content-Type": content_type} if content_type else {}
                response = await http.post(path, content=good, headers=headers)
                problem = assert_problem(response, 415, "unsupported-media-type")
                assert "application/json" in problem["detail"]

        # Over the limit: by Content-Length, and streamed (chunked, no length) past it.
        big = json.dumps(push_body(fs_target.connection_id, {**draft, "note": "n" * 200})).encode()
        assert_problem(await http.post(push, content=big, headers=json_type), 413, "body-too-large")

        async def chunks():  # type: ignore[no-untyped-def]
            for start in range(0, len(big), 64):
                yield big[start : start + 64]

        response = await http.post(push, content=chunks(), headers=json_type)
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_problem(response, 413, "body-too-large")
        # Other routes keep a small limit whatever the push limit is.
        response = await http.post(retry, json={"reason": "r" * 70_000})
        assert_problem(response, 413, "body-too-large")
    assert ledger.list_exports() == [] and await _no_workflow(client, did)
