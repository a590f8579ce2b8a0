"""Small helpers shared by the tests: drafts and acks, digests, free ports, and waiting.

``free_ports`` is the dev stack's own (starter/devstack.py); it is re-exported here.

Waiting: a test waits for a condition with ``eventually`` (``eventually_sync`` in
threads and synchronous code), never for a fixed time: on a loaded 2-core machine a
server takes as long as it takes, and a fixed sleep is either too short (flaky) or
too long (slow). A sleep stays only where the time itself is under test.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client

from dropzone.contracts import ExportState
from starter.api import export_handle, export_status
from starter.devstack import free_ports

EXAMPLE_DRAFT = Path(__file__).parent / "dropzone" / "golden" / "draft_order.json"
WAIT = 30.0  # the default bound of a wait: generous, a wait returns as soon as its condition holds

T = TypeVar("T")


def sha256_of(source: Path | bytes) -> str:
    """The hex SHA-256 of a file's bytes (a ``Path``) or of ``bytes``."""
    data = source.read_bytes() if isinstance(source, Path) else source
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """One free port on 127.0.0.1 (``free_ports(n)`` for several that must differ)."""
    return free_ports(1)[0]


def _failure(what: str | Callable[[], str], timeout: float, last: Any) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"{text}: not within {timeout:.1f} s (last: {last!r})")


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = WAIT,
    what: str | Callable[[], str],
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` (plain or async) until it returns something truthy, and return that.

    An exception of a type in ``ignoring`` counts as "not yet" (a workflow not started yet).
    After ``timeout`` seconds: AssertionError naming ``what`` (a string, or a callable asked
    then, for details only known at the end) and the last value seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except ignoring as exc:
            last = exc
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last)
        await asyncio.sleep(every)


def eventually_sync(
    condition: Callable[[], T],
    *,
    timeout: float = WAIT,
    what: str | Callable[[], str],
    every: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """``eventually`` for synchronous code (threads, fixtures that start servers)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last = value
        except ignoring as exc:
            last = exc
        if time.monotonic() > deadline:
            raise _failure(what, timeout, last)
        time.sleep(every)


def make_draft(*, org_id: uuid.UUID, lines: int | None = None, **header: Any) -> dict[str, Any]:
    """The sample draft with a fresh draft id (and optionally more lines)."""
    draft = json.loads(EXAMPLE_DRAFT.read_text(encoding="utf-8"))
    draft = copy.deepcopy(draft)
    draft["draft_order_id"] = str(uuid.uuid4())
    draft["org_id"] = str(org_id)
    draft["header"].update(header)
    if lines is not None:
        template = draft["lines"][0]
        draft["lines"] = [
            {**template, "line_no": n, "internal_sku": f"INT-{n:06d}", "qty": n % 50 + 1}
            for n in range(1, lines + 1)
        ]
    return draft


async def wait_for_state(
    client: Client,
    draft_order_id: str | uuid.UUID,
    predicate: Callable[[ExportState], bool],
    *,
    timeout: float = WAIT,
) -> ExportState:
    seen: list[ExportState] = []

    async def reached() -> ExportState | None:
        state = await export_status(client, draft_order_id)
        seen.append(state)
        return state if predicate(state) else None

    return await eventually(
        reached,
        timeout=timeout,
        every=0.2,
        ignoring=(Exception,),  # the workflow may not have started yet
        what=lambda: f"export of {draft_order_id} reaching the expected state; last state: {seen[-1:]}",
    )


async def pending_activity(client: Client, draft_order_id: str, activity_type: str) -> PendingActivityInfo | None:
    """The run's pending activity of that type (its attempt, its last failure), if one is pending."""
    description = await export_handle(client, draft_order_id).describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == activity_type:
            return pending
    return None


def write_ack_atomically(ack_dir: Path, name: str, body: dict[str, Any] | bytes) -> Path:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    tmp = ack_dir / f".{name}.writing"
    tmp.write_bytes(data)
    final = ack_dir / name
    tmp.rename(final)
    return final


def ack_body(erp_order_id: str = "SO-2025-000123") -> dict[str, Any]:
    return {"status": "ACKED", "erp_order_id": erp_order_id, "processed_at": "2025-12-27T10:10:00Z"}


def error_body(code: str = "INVALID_CUSTOMER") -> dict[str, Any]:
    return {
        "status": "FAILED",
        "error_code": code,
        "message": "Customer 4711 not found in ERP",
        "processed_at": "2025-12-27T10:10:00Z",
    }
