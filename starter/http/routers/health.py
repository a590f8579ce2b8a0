"""``/healthz`` (the process answers) and ``/readyz`` (Temporal, PostgreSQL and S3 answer)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from dropzone.errors import DropzoneError
from starter.http.deps import ResourcesDep
from starter.http.problems import ProblemError, responses
from starter.http.schemas import Health, Ready

router = APIRouter(tags=["health"])

# Each dependency answers within this, or counts as unreachable.
CHECK_TIMEOUT_SECONDS = 5.0
# An object key that is never written: a HEAD for it proves the bucket answers.
PROBE_KEY = "drafts/.readyz-probe"


@router.get("/healthz", response_model=Health, summary="The process is up (no dependency is asked)")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Temporal, PostgreSQL and S3 are reachable",
    responses=responses(503),
)
async def readyz(resources: ResourcesDep) -> Ready:
    async def temporal() -> None:
        client = await resources.client()
        await client.workflow_service.get_system_info(_system_info_request())

    def s3() -> None:
        resources.store.head(PROBE_KEY)

    checks = {
        "temporal": temporal(),
        "postgresql": run_in_threadpool(resources.ledger.ping),
        "s3": run_in_threadpool(s3),
    }
    results = await asyncio.gather(*(_within(name, check) for name, check in checks.items()))
    failed = {name: why for name, why in results if why != "ok"}
    if failed:
        detail = "not ready: " + "; ".join(f"{name}: {why}" for name, why in failed.items())
        raise ProblemError(503, "not-ready", "Not ready", detail, headers={"Retry-After": "5"})
    return Ready(checks=dict(results))


async def _within(name: str, check: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(check, CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return name, f"no answer within {CHECK_TIMEOUT_SECONDS:.0f} s"
    except DropzoneError as exc:  # our messages name hosts, never credentials
        return name, exc.message
    except Exception as exc:  # noqa: BLE001 - a library's message may hold a URL with a password
        return name, f"unreachable ({type(exc).__name__})"
    return name, "ok"


def _system_info_request() -> Any:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    return GetSystemInfoRequest()
