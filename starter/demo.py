"""`dropzone dev` and `dropzone demo`: the whole product on the embedded stack.

The demo exports a batch of sample orders to a filesystem dropzone watched by
the ERP simulator. One order is first rejected (``error_`` ack), then "fixed"
and retried with the ``retry`` signal, exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.connectors import DROPZONE_JSON_V1
from dropzone.ledger import Ledger
from dropzone.settings import Settings
from starter.api import export_status, retry_export, start_export
from starter.devstack import DevStack
from starter.erp_sim import FilesystemErpSimulator

DEMO_ORG_ID = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
REJECTED_CUSTOMER = "9999"
SAMPLE_DRAFT = Path(__file__).with_name("sample_draft.json")


@dataclass
class DemoConnection:
    id: UUID
    export_dir: Path
    ack_dir: Path


def ensure_demo_connection(ledger: Ledger, data_dir: Path) -> DemoConnection:
    export_dir = (data_dir / "dropzone" / "exports").resolve()
    ack_dir = (data_dir / "dropzone" / "acks").resolve()
    export_dir.mkdir(parents=True, exist_ok=True)
    ack_dir.mkdir(parents=True, exist_ok=True)
    for summary in ledger.list_connections(DEMO_ORG_ID):
        if summary.connector_type == DROPZONE_JSON_V1:
            return DemoConnection(summary.id, export_dir, ack_dir)
    config = parse_connection_config({
        "mode": "filesystem", "export_path": str(export_dir), "ack_path": str(ack_dir),
        "poll_interval_seconds": 1,
    })
    summary = ledger.add_connection(DEMO_ORG_ID, DROPZONE_JSON_V1, config_to_storable(config))
    return DemoConnection(summary.id, export_dir, ack_dir)


def sample_drafts(count: int) -> list[dict[str, Any]]:
    base = json.loads(SAMPLE_DRAFT.read_text(encoding="utf-8"))
    drafts = []
    for n in range(1, count + 1):
        draft = copy.deepcopy(base)
        draft["draft_order_id"] = str(uuid.uuid4())
        draft["org_id"] = str(DEMO_ORG_ID)
        draft["header"]["external_order_number"] = f"PO-{10000 + n}"
        if n == 3:
            draft["customer"]["erp_customer_number"] = REJECTED_CUSTOMER
        drafts.append(draft)
    return drafts


def settings_for(stack: DevStack) -> Settings:
    env = stack.environment()
    return Settings(**{k.removeprefix("DROPZONE_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]


async def run_worker_until(settings: Settings, stop: asyncio.Event) -> None:
    from worker import run_worker

    await run_worker(settings, stop=stop)


async def run_demo(stack: DevStack, *, count: int, exit_when_done: bool, console: Console) -> int:
    from worker import build_adapters, connect_client

    settings = settings_for(stack)
    adapters = build_adapters(settings)
    connection = ensure_demo_connection(adapters.ledger, stack.data_dir)
    customer_fixed = False

    def erp_rules(document: dict[str, Any]) -> tuple[bool, str]:
        if document["customer"]["erp_customer_number"] == REJECTED_CUSTOMER and not customer_fixed:
            return False, "INVALID_CUSTOMER"
        return True, ""

    simulator = FilesystemErpSimulator(connection.export_dir, connection.ack_dir, decide=erp_rules).start()
    stop = asyncio.Event()
    worker_task = asyncio.create_task(run_worker_until(settings, stop))
    client = await connect_client(settings)
    drafts = sample_drafts(count)
    started_at: dict[str, float] = {}
    finished: dict[str, Any] = {}
    retried: set[str] = set()
    try:
        for draft in drafts:
            await start_export(client, erp_connection_id=connection.id, draft=draft, store=adapters.store)
            started_at[draft["draft_order_id"]] = time.monotonic()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("exporting", total=len(drafts))
            deadline = time.monotonic() + 120
            while len(finished) < len(drafts) and time.monotonic() < deadline:
                for draft in drafts:
                    did = draft["draft_order_id"]
                    if did in finished:
                        continue
                    state = await export_status(client, did)
                    if state.status == "FAILED" and did not in retried:
                        # The operator fixes the customer in the ERP, then retries.
                        customer_fixed = True
                        retried.add(did)
                        await retry_export(client, did, reason="customer number fixed in the ERP", requested_by="demo")
                    elif state.status == "ACKED":
                        finished[did] = (state, time.monotonic() - started_at[did])
                progress.update(task, completed=len(finished))
                await asyncio.sleep(0.3)
        table = Table("draft", "file", "status", "ERP order id", "attempts", "seconds", title="demo exports")
        for draft in drafts:
            did = draft["draft_order_id"]
            state, seconds = finished.get(did, (await export_status(client, did), float("nan")))
            table.add_row(did[:8], state.filename or "-", state.status, state.erp_order_id or "-", str(state.attempt), f"{seconds:.1f}")
        console.print(table)
        ok = len(finished) == len(drafts)
        ui = settings.temporal_ui_url
        console.print(f"Temporal UI: {ui}/namespaces/default/workflows?query=ExportStatus%3D%22ACKED%22", soft_wrap=True)
        if not exit_when_done:
            console.print("Stack is up; press Ctrl-C to stop.")
            await asyncio.Event().wait()
        return 0 if ok else 1
    finally:
        stop.set()
        await worker_task
        simulator.stop()
        adapters.close()


async def run_dev(stack: DevStack, console: Console, *, erp_simulator: bool = True) -> None:
    from worker import build_adapters

    settings = settings_for(stack)
    adapters = build_adapters(settings)
    try:
        connection = ensure_demo_connection(adapters.ledger, stack.data_dir)
    finally:
        adapters.close()
    simulator = FilesystemErpSimulator(connection.export_dir, connection.ack_dir) if erp_simulator else None
    if simulator is not None:
        simulator.start()
        console.print("ERP simulator: acknowledging every valid export in the dropzone")
    console.print(f"Temporal UI:   {settings.temporal_ui_url}")
    console.print(f"dropzone:      {connection.export_dir} (acks: {connection.ack_dir})")
    console.print(f"connection:    {connection.id} (org {DEMO_ORG_ID})")
    console.print(f"next, in another terminal:\n  dropzone export {SAMPLE_DRAFT} --connection {connection.id} --wait")
    stop = asyncio.Event()
    try:
        await run_worker_until(settings, stop)
    finally:
        stop.set()
        if simulator is not None:
            simulator.stop()
