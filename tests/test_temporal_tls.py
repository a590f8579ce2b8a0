"""A secured Temporal: TLS, mTLS and API keys, through real proxies and servers.

The suite's dev server speaks plaintext; a TLS-terminating proxy with a CA made
here (tests/fixtures/tls.py) stands in front of it, once accepting any client
and once demanding a client certificate. The worker and the CLI run as real
processes. An API key travels in an HTTP/2 header no TCP proxy can read, so a
small TLS gRPC server records what the CLI sends.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from dropzone.errors import InvalidConfigError
from dropzone.settings import Settings
from dropzone.temporal_connection import connect_options
from tests.fixtures.operators import REPO_ROOT, WORKER
from tests.fixtures.tls import Pki, RecordingGrpcServer, TlsProxy, make_pki, server_context
from tests.helpers import make_draft

WORKER_EXIT_DEADLINE = 90.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _upstream_port(temporal_env: WorkflowEnvironment) -> int:
    return int(temporal_env.client.service_client.config.target_host.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def tls_proxy(pki: Pki, temporal_env: WorkflowEnvironment) -> Iterator[TlsProxy]:
    with TlsProxy(server_context(pki, require_client_cert=False), _upstream_port(temporal_env)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def mtls_proxy(pki: Pki, temporal_env: WorkflowEnvironment) -> Iterator[TlsProxy]:
    with TlsProxy(server_context(pki, require_client_cert=True), _upstream_port(temporal_env)) as proxy:
        yield proxy


def mtls_env(proxy: TlsProxy, pki: Pki) -> dict[str, str]:
    return {
        "DROPZONE_TEMPORAL_ADDRESS": proxy.address,
        "DROPZONE_TEMPORAL_TLS_CA_FILE": str(pki.ca),
        "DROPZONE_TEMPORAL_TLS_CERT_FILE": str(pki.client_cert),
        "DROPZONE_TEMPORAL_TLS_KEY_FILE": str(pki.client_key),
    }


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exactly one line on stderr, holding every needle."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- the worker and the CLI, end to end --------------------------------------------------


async def test_worker_and_cli_export_through_mtls(
    mtls_proxy, pki, worker_process, dropzone_cli, target_without_acks, tmp_path
):
    """Both processes reach Temporal only through the proxy, with the test CA and a client certificate."""
    accepted_before = mtls_proxy.accepted
    draft = make_draft(org_id=target_without_acks.org_id)
    path = tmp_path / "draft.json"
    path.write_text(json.dumps(draft))
    env = mtls_env(mtls_proxy, pki)
    async with worker_process(**env) as worker:
        result = await dropzone_cli(
            "export", str(path), "--connection", str(target_without_acks.connection_id), "--wait", "--json",
            env={**env, "DROPZONE_TASK_QUEUE": worker.task_queue},
        )
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["status"] == "SENT"
    assert (target_without_acks.export_dir / state["filename"]).is_file()
    assert mtls_proxy.accepted >= accepted_before + 2  # the worker's connection and the CLI's


async def test_tls_with_the_right_ca_and_server_name_connects(tls_proxy, pki, dropzone_cli_in_process):
    """The server answers (no such workflow): the TLS connection itself worked."""
    draft_id = uuid.uuid4()
    env = {
        "DROPZONE_TEMPORAL_ADDRESS": tls_proxy.address,
        "DROPZONE_TEMPORAL_TLS_CA_FILE": str(pki.ca),
        "DROPZONE_TEMPORAL_TLS_SERVER_NAME": "localhost",
    }
    result = await dropzone_cli_in_process("retry", str(draft_id), "--dry-run", env=env)
    one_error_line(result, f"no export workflow for draft {draft_id}")


async def test_wrong_ca_fails_in_one_line_for_the_cli(tls_proxy, pki, dropzone_cli):
    env = {"DROPZONE_TEMPORAL_ADDRESS": tls_proxy.address, "DROPZONE_TEMPORAL_TLS_CA_FILE": str(pki.other_ca)}
    result = await dropzone_cli("retry", str(uuid.uuid4()), "--dry-run", env=env)
    one_error_line(
        result, f"cannot reach Temporal at {tls_proxy.address}", "TLS handshake failed",
        "check DROPZONE_TEMPORAL_TLS_CA_FILE",
    )


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"DROPZONE_TEMPORAL_TLS_CA_FILE": "other_ca"},
         ["cannot reach Temporal at", "TLS handshake failed", "check DROPZONE_TEMPORAL_TLS_CA_FILE"]),
        ({"DROPZONE_TEMPORAL_TLS": "maybe"}, ["invalid settings: temporal_tls"]),
    ],
    ids=["wrong-ca", "not-a-boolean"],
)
async def test_the_worker_stops_in_one_line(tls_proxy, pki, dropzone_env, settings, needles):
    settings = {k: str(getattr(pki, v)) if k.endswith("_FILE") else v for k, v in settings.items()}
    env = {
        **dropzone_env, "DROPZONE_TASK_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
        "DROPZONE_TEMPORAL_ADDRESS": tls_proxy.address, **settings,
    }
    proc = await asyncio.create_subprocess_exec(
        *WORKER, env=env, cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), WORKER_EXIT_DEADLINE)
    result = subprocess.CompletedProcess(WORKER, proc.returncode or 0, stdout.decode(), stderr.decode())
    line = one_error_line(result, *needles)
    assert line.startswith("error: ") and result.returncode == 2


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"DROPZONE_TEMPORAL_TLS_SERVER_NAME": "temporal.example.com"},
         ["not valid for this host name", "check DROPZONE_TEMPORAL_TLS_SERVER_NAME"]),
        ({"DROPZONE_TEMPORAL_TLS_CA_FILE": ""}, ["it may require TLS", "DROPZONE_TEMPORAL_TLS=true"]),
        ({"DROPZONE_TEMPORAL_TLS_CA_FILE": "", "DROPZONE_TEMPORAL_TLS": "true"},  # the system's CAs only
         ["not signed by a trusted CA", "check DROPZONE_TEMPORAL_TLS_CA_FILE"]),
        ({"DROPZONE_TEMPORAL_ADDRESS": None}, ["the server does not speak TLS", "DROPZONE_TEMPORAL_TLS"]),
    ],
    ids=["wrong-server-name", "plaintext-to-tls", "system-cas-only", "tls-to-plaintext"],
)
async def test_tls_mismatches_name_the_setting(
    tls_proxy, pki, dropzone_env, dropzone_cli_in_process, settings, needles
):
    env = {"DROPZONE_TEMPORAL_ADDRESS": tls_proxy.address, "DROPZONE_TEMPORAL_TLS_CA_FILE": str(pki.ca), **settings}
    if env["DROPZONE_TEMPORAL_ADDRESS"] is None:  # the dev server itself, which speaks plaintext
        env["DROPZONE_TEMPORAL_ADDRESS"] = dropzone_env["DROPZONE_TEMPORAL_ADDRESS"]
    result = await dropzone_cli_in_process("retry", str(uuid.uuid4()), "--dry-run", env=env)
    one_error_line(result, "cannot reach Temporal at", *needles)


# --- mTLS: refused without our client certificate ------------------------------------------


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_mtls_proxy_refuses_other_clients_in_one_line(mtls_proxy, pki, dropzone_cli_in_process, client):
    env = {"DROPZONE_TEMPORAL_ADDRESS": mtls_proxy.address, "DROPZONE_TEMPORAL_TLS_CA_FILE": str(pki.ca)}
    if client == "stranger":  # a certificate, but from a CA the server does not trust
        env |= {"DROPZONE_TEMPORAL_TLS_CERT_FILE": str(pki.stranger_cert),
                "DROPZONE_TEMPORAL_TLS_KEY_FILE": str(pki.stranger_key)}
    refused_before = len(mtls_proxy.refused)
    result = await dropzone_cli_in_process("retry", str(uuid.uuid4()), "--dry-run", env=env)
    line = one_error_line(result, "cannot reach Temporal at", "DROPZONE_TEMPORAL_TLS_CERT_FILE")
    assert ("may require a client certificate" in line) == (client == "none"), line
    reasons = await mtls_proxy.refusals_after(refused_before)
    assert reasons, "the proxy never refused a handshake"
    expected = "PEER_DID_NOT_RETURN_A_CERTIFICATE" if client == "none" else "CERTIFICATE_VERIFY_FAILED"
    assert expected in reasons, reasons


# --- API key (Temporal Cloud) --------------------------------------------------------------


async def test_api_key_is_sent_as_a_bearer_token_and_a_refusal_is_one_line(pki, dropzone_cli, tmp_path):
    key = f"dz-test-api-key-{uuid.uuid4().hex}"
    key_file = tmp_path / "temporal-api-key"
    key_file.touch(mode=0o600)
    key_file.write_text(key + "\n")
    with RecordingGrpcServer(pki) as server:
        env = {
            "DROPZONE_TEMPORAL_ADDRESS": server.address,
            "DROPZONE_TEMPORAL_NAMESPACE": "orders.a1b2c",
            "DROPZONE_TEMPORAL_TLS_CA_FILE": str(pki.ca),
            "DROPZONE_TEMPORAL_API_KEY_FILE": str(key_file),
        }
        result = await dropzone_cli("retry", str(uuid.uuid4()), "--dry-run", env=env)
    one_error_line(result, f"cannot reach Temporal at {server.address}", "refused the credentials",
                   "check DROPZONE_TEMPORAL_API_KEY_FILE")
    assert key not in result.stdout + result.stderr
    assert server.calls, "the CLI never reached the gRPC server"
    method, metadata = server.calls[0]
    assert method == "/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo"
    assert metadata["authorization"] == f"Bearer {key}"
    # Temporal Cloud refuses a GetSystemInfo carrying temporal-namespace (the SDK adds it to namespaced calls).
    assert "temporal-namespace" not in metadata


# --- files the settings name: checked before any connection --------------------------------


def _settings(pki: Pki, **values: object) -> Settings:
    base: dict[str, object] = {"temporal_tls_ca_file": pki.ca}
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def test_a_good_mtls_configuration_carries_ca_certificate_and_key(pki):
    pair = {"temporal_tls_cert_file": pki.client_cert, "temporal_tls_key_file": pki.client_key}
    options = connect_options(_settings(pki, **pair))
    assert options.tls is not False and options.tls is not True and options.client_cert
    assert options.tls.server_root_ca_cert == pki.ca.read_bytes()
    assert options.tls.client_private_key == pki.client_key.read_bytes()
    assert connect_options(Settings()).tls is False  # nothing set: plaintext, as the dev server wants


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing-ca", ["cannot read DROPZONE_TEMPORAL_TLS_CA_FILE", "No such file"]),
        ("not-a-certificate", ["DROPZONE_TEMPORAL_TLS_CA_FILE", "holds no PEM certificate"]),
        ("cert-without-key", ["DROPZONE_TEMPORAL_TLS_CERT_FILE is set but DROPZONE_TEMPORAL_TLS_KEY_FILE is not"]),
        ("key-of-another-cert", ["DROPZONE_TEMPORAL_TLS_KEY_FILE", "is not the key of the certificate"]),
        ("key-readable-by-others", ["DROPZONE_TEMPORAL_TLS_KEY_FILE", "accessible by group or others", "chmod 600"]),
        ("api-key-file-readable-by-others", ["DROPZONE_TEMPORAL_API_KEY_FILE", "accessible by group or others"]),
        ("api-key-twice", ["set DROPZONE_TEMPORAL_API_KEY or DROPZONE_TEMPORAL_API_KEY_FILE, not both"]),
        ("api-key-without-tls", ["DROPZONE_TEMPORAL_API_KEY needs TLS"]),
    ],
)
def test_bad_files_and_combinations_name_the_setting(pki, tmp_path, case, needles):
    loose = tmp_path / "loose"
    loose.write_text("not a secret place\n")
    os.chmod(loose, 0o644)
    pair = {"temporal_tls_cert_file": pki.client_cert}
    values: dict[str, object] = {
        "missing-ca": {"temporal_tls_ca_file": tmp_path / "absent.pem"},
        "not-a-certificate": {"temporal_tls_ca_file": loose},
        "cert-without-key": pair,
        "key-of-another-cert": {**pair, "temporal_tls_key_file": pki.stranger_key},
        "key-readable-by-others": {**pair, "temporal_tls_key_file": loose},
        "api-key-file-readable-by-others": {"temporal_api_key_file": loose},
        "api-key-twice": {"temporal_api_key": "k", "temporal_api_key_file": loose},
        "api-key-without-tls": {"temporal_api_key": "k", "temporal_tls": False, "temporal_tls_ca_file": None},
    }[case]
    with pytest.raises(InvalidConfigError) as raised:
        connect_options(_settings(pki, **values))
    for needle in needles:
        assert needle in raised.value.message


async def test_the_cli_names_an_unreadable_key_file_in_one_line(pki, dropzone_cli_in_process, tmp_path):
    env = {
        "DROPZONE_TEMPORAL_TLS_CERT_FILE": str(pki.client_cert),
        "DROPZONE_TEMPORAL_TLS_KEY_FILE": str(tmp_path / "gone.key"),
    }
    result = await dropzone_cli_in_process("retry", str(uuid.uuid4()), "--dry-run", env=env)
    one_error_line(result, "cannot read DROPZONE_TEMPORAL_TLS_KEY_FILE", str(tmp_path / "gone.key"))



def test_the_embedded_stack_ignores_tls_settings_meant_for_another_temporal(pki, monkeypatch):
    from starter.demo import settings_for

    class Stack:  # what settings_for reads of a DevStack
        def environment(self) -> dict[str, str]:
            return {"DROPZONE_TEMPORAL_ADDRESS": "127.0.0.1:7233"}

    monkeypatch.setenv("DROPZONE_TEMPORAL_TLS_CA_FILE", str(pki.ca))
    monkeypatch.setenv("DROPZONE_TEMPORAL_API_KEY", "meant-for-temporal-cloud")
    assert connect_options(Settings()).api_key == "meant-for-temporal-cloud"
    assert connect_options(settings_for(Stack())).tls is False  # type: ignore[arg-type]
