"""`dropzone api` as an operator runs it, its OpenAPI document, /healthz and /readyz, and the
answers it gives when things break: never a traceback, never a secret.

docs/openapi.json is the reviewed copy of the served document; regenerate it with
`dropzone api --write-openapi docs/openapi.json` after changing the API."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest

from starter.devstack import free_ports
from starter.http import create_app, serving
from tests.fixtures.operators import DROPZONE, REPO_ROOT
from tests.helpers import eventually
from tests.test_api_support import api_server, api_settings, assert_problem  # noqa: F401  (fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")

OPENAPI_COPY = REPO_ROOT / "docs" / "openapi.json"
START_DEADLINE = 90.0
SECRET_PASSWORD = "Sentinel-DB-Pw-5c1e"


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with httpx.AsyncClient(timeout=2.0) as http:

        async def healthy() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"dropzone api exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            return (await http.get(f"{url}/healthz")).status_code == 200

        await eventually(
            healthy, timeout=START_DEADLINE, every=0.2, ignoring=(httpx.TransportError,),
            what=lambda: f"dropzone api answering:\n{log.read_text()[-3000:]}",
        )


async def test_dropzone_api_serves_the_checked_in_openapi_docs_and_readiness(dropzone_env, tmp_path):
    (port,) = free_ports(1)
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *DROPZONE, "api", "--port", str(port), env={**dropzone_env, "DROPZONE_LOG_FORMAT": "json"},
            cwd=REPO_ROOT, stdout=sink, stderr=sink, stdin=asyncio.subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(url, proc, log)
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
            served = (await http.get("/openapi.json")).json()
            docs = await http.get("/docs")
            ready = await http.get("/readyz")
            unauthenticated = await http.get("/exports")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
    checked_in = json.loads(OPENAPI_COPY.read_text(encoding="utf-8"))
    assert served == checked_in, (
        "docs/openapi.json differs from the served document: review the change and run "
        "'dropzone api --write-openapi docs/openapi.json'"
    )
    assert set(served["paths"]) == {
        "/draft-orders/{draft_order_id}/push", "/draft-orders/{draft_order_id}/retry-push",
        "/draft-orders/{draft_order_id}/exports", "/exports", "/healthz", "/readyz",
    }
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert ready.status_code == 200 and ready.json()["checks"] == {"temporal": "ok", "postgresql": "ok", "s3": "ok"}
    assert_problem(unauthenticated, 401, "unauthorized")
    output = log.read_text()
    assert code == 0, output
    # The event loop and HTTP parser of uvicorn's "standard" install (benchmarks/bench_api.py), as logged.
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (listening,) = [line for line in logged if line.get("event") == "api listening"]
    assert (listening["event_loop"], listening["http"]) == ("uvloop", "uvicorn.protocols.http.httptools_impl"), listening
    assert "Traceback" not in output and dropzone_env["DROPZONE_S3_SECRET_KEY"] not in output


async def test_the_checked_in_copy_is_what_the_code_generates():
    from starter.http import openapi_json

    assert OPENAPI_COPY.read_text(encoding="utf-8") == openapi_json(), (
        "run 'dropzone api --write-openapi docs/openapi.json' and review the diff"
    )


async def test_readyz_names_each_unreachable_dependency_and_no_secret(
    migrated_db_url, seaweedfs, temporal_env, config_key, payload_keys
):
    closed = free_ports(3)
    settings = api_settings(
        migrated_db_url, seaweedfs, temporal_env, config_key, payload_keys,
        temporal_address=f"127.0.0.1:{closed[0]}",
        database_url=f"postgresql+psycopg://dropzone:{SECRET_PASSWORD}@127.0.0.1:{closed[1]}/dropzone",
        s3_endpoint_url=f"http://127.0.0.1:{closed[2]}",
    )
    async with serving(settings, port=0) as url, httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        # Authentication needs the database: a 503 that names it, not a 401 or a 500.
        listed = await http.get("/exports", headers={"Authorization": "Bearer dzt_whatever"})
    problem = assert_problem(ready, 503, "not-ready")
    assert ready.headers["retry-after"] == "5"
    for name, where in (("temporal", closed[0]), ("postgresql", closed[1]), ("s3", closed[2])):
        assert f"{name}: " in problem["detail"] and str(where) in problem["detail"], problem
    db_problem = assert_problem(listed, 503, "unavailable")
    assert db_problem["code"] == "DATABASE_UNAVAILABLE" and str(closed[1]) in db_problem["detail"]
    for response in (ready, listed):
        assert SECRET_PASSWORD not in response.text and seaweedfs.secret_key not in response.text


async def test_an_unexpected_error_is_a_500_problem_without_traceback_or_message(
    migrated_db_url, seaweedfs, temporal_env, config_key, payload_keys, caplog
):
    settings = api_settings(migrated_db_url, seaweedfs, temporal_env, config_key, payload_keys)
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"password={SECRET_PASSWORD}")

    async with serving(settings, port=0, app=app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/boom")
    problem = assert_problem(response, 500, "internal")
    assert SECRET_PASSWORD not in response.text and "RuntimeError" not in response.text
    error_id = problem["detail"].split("id ")[1].split(")")[0]
    logged = [r.getMessage() for r in caplog.records if r.name == "dropzone.api"]
    assert any(error_id in line and "RuntimeError" in line for line in logged), logged
    assert all(SECRET_PASSWORD not in r.getMessage() and not r.exc_info for r in caplog.records if r.levelno >= 30)


async def test_dropzone_api_refuses_bad_settings_and_a_taken_port_in_one_line(dropzone_cli):
    import socket

    missing = await dropzone_cli("api", env={"DROPZONE_CONFIG_KEYS": ""})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = await dropzone_cli("api", "--port", str(taken.getsockname()[1]))
    for result, words in ((missing, "DROPZONE_CONFIG_KEYS"), (busy, "already in use")):
        assert result.returncode == 2, result
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr + result.stdout
