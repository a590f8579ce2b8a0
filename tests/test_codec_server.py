"""`dropzone codec-server` over real HTTP: the protocol the Temporal UI and CLI speak, its guards.

The session's codec server (tests/fixtures/temporal.py) is a real process with
the suite's payload key, a token and one allowed UI origin.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload

from starter.codec import ENCODING, KEY_ID_KEY, EncryptionCodec, generate_key, parse_keys
from tests.fixtures.temporal import TEST_PAYLOAD_KEYS, CodecServer

REPO = Path(__file__).resolve().parents[1]


def call(url: str, body: bytes | dict[str, Any] | None = None, *, method: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, head, raw = exc.code, dict(exc.headers), exc.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return status, {k.lower(): v for k, v in head.items()}, parsed


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain_json_payload(value: Any) -> dict[str, Any]:
    return {"metadata": {"encoding": b64(b"json/plain")}, "data": b64(json.dumps(value).encode())}


def auth(server: CodecServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def test_encode_then_decode_round_trip(codec_server: CodecServer):
    value = {"customer": {"name": "Round-Trip Customer GmbH"}}
    status, _, encoded = call(f"{codec_server.url}/encode", {"payloads": [plain_json_payload(value)]}, headers=auth(codec_server))
    assert status == 200, encoded
    [sealed] = encoded["payloads"]
    assert base64.b64decode(sealed["metadata"]["encoding"]) == ENCODING
    assert base64.b64decode(sealed["metadata"][KEY_ID_KEY]) == b"test-1"
    assert b"Round-Trip" not in base64.b64decode(sealed["data"])

    status, _, decoded = call(f"{codec_server.url}/decode", encoded, headers=auth(codec_server))
    assert status == 200, decoded
    [opened] = decoded["payloads"]
    assert json.loads(base64.b64decode(opened["data"])) == value
    # The Temporal CLI sends the token as given (--codec-auth): a bare token works too.
    status, _, _ = call(f"{codec_server.url}/decode", encoded, headers={"Authorization": codec_server.token})
    assert status == 200


def test_plain_payloads_pass_through_decode(codec_server: CodecServer):
    plain = plain_json_payload({"recorded": "before encryption"})
    status, _, decoded = call(f"{codec_server.url}/decode", {"payloads": [plain]}, headers=auth(codec_server))
    assert status == 200 and decoded["payloads"] == [plain]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "wrong-token", "Basic Zm9vOmJhcg=="])
@pytest.mark.parametrize("path", ["/decode", "/encode"])
def test_no_or_wrong_token_is_401(codec_server: CodecServer, header: str | None, path: str):
    headers = {"Authorization": header} if header else {}
    status, head, body = call(f"{codec_server.url}{path}", {"payloads": [plain_json_payload(1)]}, headers=headers)
    assert status == 401, body
    assert head["content-type"] == "application/problem+json"
    assert body["status"] == 401 and "Authorization" in body["detail"]


def test_unknown_key_id_is_a_clear_4xx(codec_server: CodecServer):
    foreign = EncryptionCodec(parse_keys(generate_key("retired-2025")))
    sealed = foreign.encrypt(Payload(metadata={"encoding": b"json/plain"}, data=b'"x"'))
    body = {"payloads": [{"metadata": {k: b64(v) for k, v in sealed.metadata.items()}, "data": b64(sealed.data)}]}
    status, head, problem = call(f"{codec_server.url}/decode", body, headers=auth(codec_server))
    assert status == 422, problem
    assert head["content-type"] == "application/problem+json"
    assert "'retired-2025'" in problem["detail"] and "DROPZONE_PAYLOAD_KEYS" in problem["detail"]
    assert "test-1" in problem["detail"]  # which ids it does hold


def test_tampered_ciphertext_and_bad_bodies_are_4xx(codec_server: CodecServer):
    codec = EncryptionCodec(parse_keys(TEST_PAYLOAD_KEYS))
    sealed = codec.encrypt(Payload(metadata={"encoding": b"json/plain"}, data=b'"x"'))
    flipped = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    body = {"payloads": [{"metadata": {k: b64(v) for k, v in sealed.metadata.items()}, "data": b64(flipped)}]}
    status, _, problem = call(f"{codec_server.url}/decode", body, headers=auth(codec_server))
    assert status == 422 and "does not decrypt" in problem["detail"], problem
    status, _, problem = call(f"{codec_server.url}/decode", b"{not json", headers=auth(codec_server))
    assert status == 400 and problem["title"] == "Bad Request", problem
    status, _, problem = call(f"{codec_server.url}/decode", {"payloads": "nope"}, headers=auth(codec_server))
    assert status == 400, problem


def preflight(server: CodecServer, origin: str) -> tuple[int, dict[str, str], Any]:
    return call(f"{server.url}/decode", None, method="OPTIONS", headers={
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
    })


def test_cors_preflight_from_the_ui_origin_passes(codec_server: CodecServer):
    status, head, _ = preflight(codec_server, codec_server.ui_origin)
    assert status == 200
    assert head["access-control-allow-origin"] == codec_server.ui_origin
    assert "POST" in head["access-control-allow-methods"]
    allowed = head["access-control-allow-headers"].lower()
    assert "x-namespace" in allowed and "authorization" in allowed and "content-type" in allowed
    # The real request from that origin gets the header the browser needs to read the answer.
    status, head, _ = call(f"{codec_server.url}/decode", {"payloads": []},
                           headers={**auth(codec_server), "Origin": codec_server.ui_origin})
    assert status == 200 and head["access-control-allow-origin"] == codec_server.ui_origin


def test_cors_preflight_from_another_origin_fails(codec_server: CodecServer):
    status, head, _ = preflight(codec_server, "http://evil.test:8233")
    assert status == 400
    assert "access-control-allow-origin" not in head
    status, head, _ = call(f"{codec_server.url}/decode", {"payloads": []},
                           headers={**auth(codec_server), "Origin": "http://evil.test:8233"})
    assert "access-control-allow-origin" not in head  # the browser refuses to hand the answer over


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
    return subprocess.run([sys.executable, "-m", "starter.cli", *args], env={**base, "DROPZONE_ENV_FILE": "/nonexistent", **env},
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def test_refuses_a_non_loopback_address_without_a_token():
    result = run_cli("codec-server", "--host", "0.0.0.0", "--port", "1", DROPZONE_PAYLOAD_KEYS=TEST_PAYLOAD_KEYS)
    assert result.returncode == 2
    assert "refuses to listen on 0.0.0.0 without DROPZONE_CODEC_AUTH_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(("keys", "needle"), [
    (None, "DROPZONE_PAYLOAD_KEYS is not set"),
    ("k1:not-base64!", "DROPZONE_PAYLOAD_KEYS: key #1 of 1 (k1): the key is not valid base64"),
    (f"{TEST_PAYLOAD_KEYS},k2:{b64(b'short')}", "DROPZONE_PAYLOAD_KEYS: key #2 of 2 (k2): the key must be 32 bytes"),
    ("no-colon", "DROPZONE_PAYLOAD_KEYS: key #1 of 1 is not 'key_id:base64key'"),
])
def test_bad_keys_are_one_line_naming_the_setting(keys: str | None, needle: str):
    env = {"DROPZONE_PAYLOAD_KEYS": keys} if keys is not None else {}
    result = run_cli("codec-server", "--port", "1", **env)
    assert result.returncode == 2, result
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    if keys:  # no key material is ever echoed
        for secret in (entry.partition(":")[2] or entry for entry in keys.split(",")):
            assert secret not in result.stderr + result.stdout


def test_payload_keygen_prints_a_usable_key():
    result = run_cli("payload-keygen", "--key-id", "prod-2026")
    assert result.returncode == 0, result.stderr
    [key] = parse_keys(result.stdout.strip())
    assert key.key_id == "prod-2026" and len(key.secret) == 32


def test_a_port_in_use_is_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("codec-server", "--port", str(port), DROPZONE_PAYLOAD_KEYS=TEST_PAYLOAD_KEYS)
    assert result.returncode == 2
    assert f"error: the codec server cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
