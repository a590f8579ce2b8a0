"""Shared pieces of the HTTP API tests (no tests here): a real uvicorn server and its clients.

``api_server`` serves ``create_app`` with uvicorn on a free 127.0.0.1 port in the
test's event loop, against the session's PostgreSQL, SeaweedFS and Temporal dev
server, on the task queue of the test's worker (``run_worker``). Import the
fixtures into a test module with ``from tests.test_api_support import api_server``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dropzone.ledger.tokens import ApiTokens
from dropzone.settings import Settings
from starter.http import serving
from tests.helpers import eventually

API_DEADLINE = 60.0


@dataclass
class Api:
    url: str
    settings: Settings
    tokens: ApiTokens

    def token_for(self, org_id: uuid.UUID, name: str = "test") -> str:
        return self.tokens.create(org_id, name)[0]

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0, **kwargs)


def api_settings(
    migrated_db_url: str, seaweedfs: Any, temporal_env: Any, config_key: str, payload_keys: str, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": migrated_db_url, "database_pool_size": 4,
        "s3_endpoint_url": seaweedfs.endpoint_url, "s3_bucket": seaweedfs.bucket,
        "s3_access_key": seaweedfs.access_key, "s3_secret_key": seaweedfs.secret_key,
        "temporal_address": temporal_env.client.service_client.config.target_host,
        "temporal_ui_url": "http://temporal-ui.test:8233", "config_keys": config_key, "payload_keys": payload_keys,
    }
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


ApiServer = Callable[..., "AsyncIterator[Api]"]


@pytest.fixture
def api_server(migrated_db_url, seaweedfs, temporal_env, config_key, payload_keys, ledger) -> ApiServer:  # type: ignore[no-untyped-def]
    """``async with api_server(task_queue, **settings) as api:`` — the API on a free port."""

    @asynccontextmanager
    async def start(task_queue: str = "api-no-worker", **overrides: Any) -> AsyncIterator[Api]:
        settings = api_settings(
            migrated_db_url, seaweedfs, temporal_env, config_key, payload_keys, task_queue=task_queue, **overrides
        )
        async with serving(settings, port=0) as url:
            yield Api(url, settings, ApiTokens(ledger.engine))

    return start


def push_body(connection_id: uuid.UUID, draft: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"erp_connection_id": str(connection_id), "draft": draft, **extra}


async def attempts(http: httpx.AsyncClient, draft_order_id: str) -> list[dict[str, Any]]:
    """Every attempt of the draft's export, through the API (empty while it has none)."""
    response = await http.get(f"/draft-orders/{draft_order_id}/exports")
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    return response.json()["attempts"]  # type: ignore[no-any-return]


async def wait_for_attempt(
    http: httpx.AsyncClient, draft_order_id: str, number: int, statuses: tuple[str, ...]
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        rows = [a for a in await attempts(http, draft_order_id) if a["attempt"] == number]
        return rows[0] if rows and rows[0]["status"] in statuses else None

    return await eventually(  # type: ignore[no-any-return]
        check, timeout=API_DEADLINE, every=0.2, what=f"attempt {number} of {draft_order_id} reaching {'/'.join(statuses)}"
    )


def dropzone_files(export_dir: Path) -> list[str]:
    return sorted(p.name for p in export_dir.iterdir() if p.is_file())


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """A problem+json answer of this status and type, with no traceback in it."""
    assert response.status_code == status, (response.status_code, response.text[:2000])
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["type"] == f"urn:orderflow-dropzone:problem:{slug}", body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body  # type: ignore[no-any-return]
