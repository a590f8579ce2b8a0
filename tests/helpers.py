"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client

from dropzone.contracts import ExportState
from starter.api import export_status

EXAMPLE_DRAFT = Path(__file__).parent / "dropzone" / "golden" / "draft_order.json"


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
    timeout: float = 30.0,
) -> ExportState:
    deadline = time.monotonic() + timeout
    last: ExportState | None = None
    while time.monotonic() < deadline:
        try:
            last = await export_status(client, draft_order_id)
            if predicate(last):
                return last
        except Exception:  # the workflow may not have started yet
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"export of {draft_order_id} never reached the expected state; last: {last}")


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
