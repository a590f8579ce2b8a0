"""`dropzone dev` and `dropzone demo`: the whole product on the embedded stack.

The demo exports a batch of sample orders to a filesystem dropzone answered by
the ERP simulator.  One order is first rejected (``error_`` ack, customer
unknown to the ERP); the demo then "fixes the customer in the ERP" and sends
the ``retry`` signal, exactly as an operator would, and the second attempt is
acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from uuid import UUID

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dropzone.connection_config import config_to_storable, parse_connection_config
from dropzone.connectors import DROPZONE_JSON_V1
from dropzone.contracts import ExportState
from dropzone.errors import InvalidConfigError, TemporalUnavailableError
from dropzone.ledger import Ledger
from dropzone.ledger.tokens import ApiTokens
from dropzone.settings import DEFAULT_ENV_FILE, Settings
from dropzone.temporal_connection import CONNECTION_VARIABLES
from starter.api import export_status, retry_export, start_export
from starter.devstack import DevStack, codec_url
from starter.erp_sim import Answer, ErpRules, FilesystemErpSimulator
from starter.http import serving
from starter.http.app import port_is_free

DEMO_ORG_ID = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
REJECTED_CUSTOMER = "9999"
SAMPLE_DRAFT = Path(__file__).with_name("sample_draft.json")
POLL_SECONDS = 0.3
BATCH_DEADLINE_SECONDS = 120.0
STARTUP_DEADLINE_SECONDS = 60.0
DEV_TOKEN_NAME = "dropzone dev"
RESULT_COLUMNS = ["draft", "file", "status", "ERP order id", "attempts", "seconds"]


@dataclass
class DemoConnection:
    id: UUID
    export_dir: Path
    ack_dir: Path


def ensure_demo_connection(ledger: Ledger, data_dir: Path) -> DemoConnection:
    """The filesystem dropzone under the data directory, and its connection (created once)."""
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
    """``count`` copies of the sample draft with fresh ids; one (the 3rd, or the last
    of a smaller batch) has a customer number the simulated ERP does not know."""
    base = json.loads(SAMPLE_DRAFT.read_text(encoding="utf-8"))
    rejected = min(3, count)
    drafts = []
    for n in range(1, count + 1):
        draft = copy.deepcopy(base)
        draft["draft_order_id"] = str(uuid.uuid4())
        draft["org_id"] = str(DEMO_ORG_ID)
        draft["header"]["external_order_number"] = f"PO-{10000 + n}"
        if n == rejected:
            draft["customer"]["erp_customer_number"] = REJECTED_CUSTOMER
        drafts.append(draft)
    return drafts


def settings_for(stack: DevStack, **overrides: Any) -> Settings:
    # The stack's Temporal is plaintext on loopback: TLS settings in the shell are for another one.
    env = {**dict.fromkeys(CONNECTION_VARIABLES, ""), **stack.environment()}
    values = {k.removeprefix("DROPZONE_").lower(): v for k, v in env.items()}
    return Settings(**{**values, **overrides})


async def wait_until_polling(client: Any, settings: Settings, worker_task: asyncio.Task[None]) -> bool:
    """True once Temporal lists this process's worker among the task queue's pollers
    (False if the worker stopped first, e.g. on Ctrl-C)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    request = DescribeTaskQueueRequest(
        namespace=settings.temporal_namespace,
        task_queue=TaskQueue(name=settings.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    # Same process, same default identity ("pid@host"): pollers of an earlier run do not count.
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while not worker_task.done() and time.monotonic() < deadline:
        response = await client.workflow_service.describe_task_queue(request)
        if any(poller.identity == client.identity for poller in response.pollers):
            return True
        await asyncio.sleep(0.1)
    if worker_task.done():
        worker_task.result()  # a worker that died says why
        return False
    raise TemporalUnavailableError(f"the worker did not start polling {settings.task_queue!r} in time")


def polling_line(settings: Settings) -> str:
    return f"worker polling task queue {settings.task_queue!r} on {settings.temporal_address}"


# ---------------------------------------------------------------------------
# the demo's batch
# ---------------------------------------------------------------------------


@dataclass
class Tracked:
    draft_id: str
    order_number: str
    started: float
    state: ExportState | None = None
    seconds: float = math.nan
    retried: bool = False

    @property
    def done(self) -> bool:
        return self.state is not None and self.state.status == "ACKED"


class BatchView:
    """Progress while the batch runs: a bar on a terminal, one line per event otherwise."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.progress: Progress | None = None
        if console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, transient=True,
            )
            self.task = self.progress.add_task("exporting", total=total)

    def __enter__(self) -> Self:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def event(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def advance(self, done: int, total: int, item: Tracked) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, description=f"ACKED {item.order_number}")
        else:
            assert item.state is not None
            self.event(f"[{done}/{total}] {item.order_number} ACKED as {item.state.erp_order_id} "
                       f"(attempt {item.state.attempt}, {item.seconds:.1f} s)")


async def export_batch(client: Any, adapters: Any, connection: DemoConnection, rules: ErpRules,
                       drafts: list[dict[str, Any]], view: BatchView, stop: asyncio.Event) -> list[Tracked]:
    """Start every export, retry the rejected one once the customer is "fixed", wait for the acks."""
    tracked = []
    for draft in drafts:
        await start_export(client, erp_connection_id=connection.id, draft=draft, store=adapters.store)
        tracked.append(Tracked(draft["draft_order_id"], draft["header"]["external_order_number"], time.monotonic()))
    view.event(f"started {len(tracked)} exports; the ERP simulator answers in {connection.ack_dir}")
    deadline = time.monotonic() + BATCH_DEADLINE_SECONDS
    done = 0
    while done < len(tracked) and time.monotonic() < deadline and not stop.is_set():
        for item in tracked:
            if item.done:
                continue
            item.state = await export_status(client, item.draft_id)
            if item.state.status == "FAILED" and item.state.waiting_for == "retry_signal" and not item.retried:
                code = item.state.last_error.code if item.state.last_error else "?"
                view.event(f"{item.order_number} was rejected by the ERP ({code}); fixing the customer "
                           "in the ERP and sending the retry signal")
                rules.reject_customers.discard(REJECTED_CUSTOMER)
                item.retried = True
                await retry_export(client, item.draft_id, reason="customer number fixed in the ERP",
                                   requested_by="dropzone demo")
            elif item.done:
                item.seconds = time.monotonic() - item.started
                done += 1
                view.advance(done, len(tracked), item)
        await asyncio.sleep(POLL_SECONDS)
    return tracked


def print_results(console: Console, tracked: list[Tracked]) -> None:
    """A table on a terminal; tab-separated lines with a header when piped."""
    rows = []
    for item in tracked:
        state = item.state
        rows.append([
            item.draft_id[:8],
            (state.filename if state else None) or "-",
            state.status if state else "?",
            (state.erp_order_id if state else None) or "-",
            str(state.attempt if state else 0),
            "-" if math.isnan(item.seconds) else f"{item.seconds:.1f}",
        ])
    if console.is_terminal:
        table = Table(*RESULT_COLUMNS, title="demo exports")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        console.file.write("\t".join(RESULT_COLUMNS) + "\n")
        for row in rows:
            console.file.write("\t".join(row) + "\n")
        console.file.flush()


def ui_link(settings: Settings, query: str) -> str:
    from urllib.parse import quote

    return f"{settings.temporal_ui_url}/namespaces/{settings.temporal_namespace}/workflows?query={quote(query)}"


async def run_demo(stack: DevStack, *, count: int, exit_when_done: bool, console: Console) -> int:
    from worker import build_adapters, connect_client, run_worker

    # The demo's own lines tell the story; the worker speaks up only about problems.
    settings = settings_for(stack, log_level="WARNING")
    adapters = build_adapters(settings)
    connection = ensure_demo_connection(adapters.ledger, stack.data_dir)
    token = dev_api_token(adapters.ledger)
    rules = ErpRules(reject_customers={REJECTED_CUSTOMER})
    simulator = FilesystemErpSimulator(connection.export_dir, connection.ack_dir, rules).start()
    stop = asyncio.Event()  # set by the worker on SIGINT/SIGTERM, or by us when done
    worker_task = asyncio.create_task(run_worker(settings, stop=stop))
    api = contextlib.AsyncExitStack()
    try:
        api_url = await open_dev_api(api, settings)
        client = await connect_client(settings)
        if await wait_until_polling(client, settings, worker_task):
            console.print(polling_line(settings), highlight=False)
        began = time.monotonic()
        with BatchView(console, count) as view:
            tracked = await export_batch(client, adapters, connection, rules, sample_drafts(count), view, stop)
        elapsed = time.monotonic() - began
        if worker_task.done():
            worker_task.result()  # a worker that died says why
        if stop.is_set():
            console.print("interrupted")
            return 130
        print_results(console, tracked)
        acked = sum(item.done for item in tracked)
        retried = sum(item.retried and item.done for item in tracked)
        console.print(f"{acked}/{len(tracked)} exports ACKED in {elapsed:.1f} s ({retried} after a retry)",
                      highlight=False)
        link = ui_link(settings, 'WorkflowType="ExportOrderWorkflow"')
        console.print(f"Temporal UI: {link}", highlight=False)
        console.print(f"Payloads are encrypted; the UI decrypts them through the codec server at "
                      f"{codec_url(stack.ports)}.", highlight=False)
        print_api(console, api_url, token)
        if not exit_when_done:
            console.print("The stack stays up for the Temporal UI; press Ctrl-C to stop.", highlight=False)
            await worker_task  # ends on Ctrl-C
        return 0 if acked == len(tracked) else 1
    finally:
        stop.set()
        await worker_task
        await api.aclose()
        simulator.stop()
        adapters.close()


# ---------------------------------------------------------------------------
# dropzone dev
# ---------------------------------------------------------------------------


def dev_api_token(ledger: Ledger) -> str:
    """A new API token for the demo organisation; the one of the previous start is revoked
    (only its hash was kept, so it could not be shown again anyway)."""
    tokens = ApiTokens(ledger.engine)
    tokens.revoke_named(DEMO_ORG_ID, DEV_TOKEN_NAME)
    return tokens.create(DEMO_ORG_ID, DEV_TOKEN_NAME)[0]


async def open_dev_api(exits: contextlib.AsyncExitStack, settings: Settings) -> str:
    """Serve the HTTP API until ``exits`` closes: on DROPZONE_API_PORT (8000), or on any free
    port when that one is taken (another stack, say); the URL is printed either way."""
    if port_is_free(settings.api_host, settings.api_port):
        try:
            return await exits.enter_async_context(serving(settings))
        except InvalidConfigError:  # taken between the check and the bind
            pass
    return await exits.enter_async_context(serving(settings, port=0))


def print_api(console: Console, url: str, token: str) -> None:
    console.print(f"HTTP API:       {url} (docs: {url}/docs)", highlight=False)
    console.print(f"API token:      {token} (org {DEMO_ORG_ID}; 'HTTP API' in the README shows curl)",
                  highlight=False, markup=False)


def next_command(stack: DevStack, connection: DemoConnection) -> str:
    prefix = ""
    if stack.env_file.resolve() != Path(DEFAULT_ENV_FILE).resolve():
        # The CLI finds the stack through ./.dropzone/dropzone.env unless told otherwise.
        prefix = f"DROPZONE_ENV_FILE={stack.env_file} "
    return f"{prefix}dropzone export {SAMPLE_DRAFT} --connection {connection.id} --wait"


async def run_dev(stack: DevStack, console: Console, *, erp_simulator: bool = True) -> None:
    from worker import build_adapters, connect_client, run_worker

    settings = settings_for(stack)
    adapters = build_adapters(settings)
    try:
        connection = ensure_demo_connection(adapters.ledger, stack.data_dir)
        token = dev_api_token(adapters.ledger)
    finally:
        adapters.close()
    simulator = None
    if erp_simulator:
        simulator = FilesystemErpSimulator(
            connection.export_dir, connection.ack_dir,
            on_answer=lambda answer: _print_answer(console, answer),
        ).start()
    lines = [
        f"Temporal UI:    {settings.temporal_ui_url}",
        f"codec server:   {codec_url(stack.ports)} (the UI decrypts payloads through it; so does "
        f"temporal workflow show --codec-endpoint {codec_url(stack.ports)} ...)",
        f"data:           {stack.data_dir} ({'reused' if stack.reused_data else 'new'})",
        f"dropzone:       {connection.export_dir}",
        f"acks:           {connection.ack_dir}"
        + (" (answered by the ERP simulator)" if erp_simulator else " (no ERP simulator: --no-erp-sim)"),
        f"connection:     {connection.id} (org {DEMO_ORG_ID})",
    ]
    for line in lines:
        console.print(line, highlight=False)
    stop = asyncio.Event()  # set by the worker itself on SIGINT/SIGTERM
    worker_task = asyncio.create_task(run_worker(settings, stop=stop))
    api = contextlib.AsyncExitStack()
    try:
        print_api(console, await open_dev_api(api, settings), token)
        client = await connect_client(settings)
        if await wait_until_polling(client, settings, worker_task):
            console.print(polling_line(settings), highlight=False)
            console.print(f"next, in another terminal:\n  {next_command(stack, connection)}", highlight=False)
            console.print("Ctrl-C stops everything.", highlight=False)
        await worker_task  # returns after a graceful shutdown
    finally:
        stop.set()
        await worker_task
        await api.aclose()
        if simulator is not None:
            simulator.stop()
    console.print("stopping the embedded stack ...", highlight=False)


def _print_answer(console: Console, answer: Answer) -> None:
    console.print(f"ERP simulator: {answer.describe()}", highlight=False)
    sys.stdout.flush()
