"""Status callbacks cost the export burst nothing measurable.

The same burst of exports (500-line drafts, OpenSSH SFTP, SeaweedFS, PostgreSQL,
one real worker process) on two connections, alternating: one without a webhook
(the baseline), one whose webhook is a local HTTP receiver answering 204. Every
export then sends one signed callback (SENT; the connections have no ack path).

"Exports delivered" is the burst's size over the time from the first start to the
last ``sent_at`` in the ledger: what the ERP sees. The run itself closes only once
its callbacks are out, so "callbacks delivered too" (first start → last result) is
reported as well, without a target.

A fourth burst in every round is the baseline again (A/A), so that the table shows how
far the machine alone moves the ratio.

Two worker processes on task queues of their own: one as deployed (the deliver
activity sends the SENT callback itself once the file is published,
``Policies.webhook_sent_with_delivery``) and one with that off (the SENT event goes
through the run's queue: a local activity in the closing run's last workflow task,
with its two patch markers; the code before it), so that both are measured in the
same run, each burst alternating with the others. The worker processes are this
module (``python -m benchmarks.bench_webhooks`` with BENCH_WEBHOOKS_WORKER set).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from benchmarks.bench_e2e import START_CONCURRENCY, Bench, E2EConfig, Workers, _check, temporal
from benchmarks.measure import Row, Sample
from benchmarks.stack import Stack
from dropzone.contracts import ExportRequest, ExportResult
from dropzone.webhooks import new_secret
from tests.helpers import make_draft

MAX_SLOWDOWN = 0.05  # issue: at most 5 % lower throughput with a receiver configured
WORKER_ENV = "BENCH_WEBHOOKS_WORKER"  # "deployed" or "queued" (the code before)
WORKER_MODULE = "benchmarks.bench_webhooks"


@dataclass
class WebhookBenchConfig:
    burst: int
    runs: int
    draft_lines: int = 500


class CountingReceiver:
    """An HTTP receiver on 127.0.0.1 that answers 204 and counts what it got."""

    def __init__(self) -> None:
        self.count = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # Keeps connections alive, as any web server in front of a receiver does (http.server's
            # default, HTTP/1.0, closes each one: a TCP connect per callback no real receiver costs).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    receiver.count += 1
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Burst:
    delivered_per_s: float  # exports / (first start → last sent_at)
    closed_per_s: float  # exports / (first start → last result)


async def _burst(bench: Bench, queue: str, connection_id: uuid.UUID, template: dict[str, Any], n: int) -> Burst:
    requests: list[ExportRequest] = [bench.request(connection_id, template) for _ in range(n)]
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def start(request: ExportRequest) -> Any:
        async with gate:
            return await bench.start("real", queue, request)

    started_wall, started = time.time(), time.perf_counter()
    handles = await asyncio.gather(*(start(r) for r in requests))
    results: list[ExportResult] = await asyncio.gather(*(h.result() for h in handles))
    closed = time.perf_counter() - started
    _check("real", results)
    rows = await asyncio.to_thread(lambda: [bench.ledger.get_export(r.export_id) for r in results])  # type: ignore[arg-type]
    last_sent = max(row.sent_at.timestamp() for row in rows if row.sent_at is not None) - started_wall
    bench._clear_dropzone()
    return Burst(delivered_per_s=n / last_sent, closed_per_s=n / closed)


async def webhook_rows(stack: Stack, config: WebhookBenchConfig) -> list[Row]:
    receiver = CountingReceiver()
    try:
        async with temporal(stack) as env:
            bench = Bench(stack, env, E2EConfig(burst=config.burst, runs=config.runs, single_runs=0, worker_counts=[1],
                                                ack_runs=0, ack_intervals=[], draft_lines=config.draft_lines))
            org_id = uuid.uuid4()  # one connection of a type per organisation
            hooked = stack.add_connection(
                bench.ledger, org_id,
                {**stack.sftp_config(ack_path=None), "webhook_url": receiver.url, "webhook_secret": new_secret()},
            )
            hooked_template = make_draft(org_id=org_id, lines=config.draft_lines)
            os.environ[WORKER_ENV] = "queued"
            async with Workers(stack, bench.client, bench.address, "real", 1, module=WORKER_MODULE) as before:
                os.environ[WORKER_ENV] = "deployed"
                async with Workers(stack, bench.client, bench.address, "real", 1, module=WORKER_MODULE) as ours:
                    async def burst(name: str, n: int) -> Burst:
                        if name in ("plain", "control"):  # control: the same burst again, its noise floor
                            return await _burst(bench, ours.task_queue, bench.connection_id, bench.template, n)
                        sent = receiver.count
                        queue = ours.task_queue if name == "deployed" else before.task_queue
                        result = await _burst(bench, queue, hooked, hooked_template, n)
                        if receiver.count - sent != n:
                            raise RuntimeError(f"{receiver.count - sent} callbacks for {n} exports")
                        return result

                    names = ["deployed", "queued", "plain", "control"]
                    for name in names:  # warm every path (imports, pools, the httpx client) before timing
                        await burst(name, min(20, config.burst))
                    measured: dict[str, list[Burst]] = {name: [] for name in names}
                    for run in range(config.runs):
                        for name in names[run % 4:] + names[: run % 4]:  # each goes first in turn
                            measured[name].append(await burst(name, config.burst))
    finally:
        os.environ.pop(WORKER_ENV, None)
        receiver.close()
    return _rows(config, measured["plain"], measured["deployed"], measured["queued"], measured["control"])


def _rows(
    config: WebhookBenchConfig, plain: list[Burst], hooked: list[Burst], before: list[Burst], control: list[Burst]
) -> list[Row]:
    ours = [b.delivered_per_s for b in hooked]
    base = [b.delivered_per_s for b in plain]
    old = [b.delivered_per_s for b in before]
    ratio = statistics.median(ours) / statistics.median(base)
    again = [b.delivered_per_s for b in control]
    ours_closed = [b.closed_per_s for b in hooked]
    base_closed = [b.closed_per_s for b in plain]
    return [
        Row(
            name=f"Burst of {config.burst} exports with a webhook receiver: exports delivered",
            ours=Sample(ours, "exports/s"),
            baseline=Sample(base, "exports/s"),
            baseline_name="same burst, no webhook",
            ratio=ratio,
            target=f"≥ {1 - MAX_SLOWDOWN:.2f}×",
            met=ratio >= 1 - MAX_SLOWDOWN,
            note="first start → last sent_at in the ledger; one signed callback per export to a local receiver (204), "
                 "1 worker, alternating runs",
            pair_ratios=[o / b for o, b in zip(ours, base, strict=True)],
        ),
        _untargeted(
            f"Burst of {config.burst} exports with a webhook receiver, SENT through the run's queue: exports delivered",
            old, base, "same burst, no webhook",
            "the code before the SENT callback went out with the delivery (Policies(webhook_sent_with_delivery=False): "
            "a local activity at close), its own worker, same run (no target)",
        ),
        _untargeted(
            f"Burst of {config.burst} exports with a webhook receiver: callbacks delivered too",
            ours_closed, base_closed, "same burst, no webhook (last result)",
            "first start → last result: a run closes only after its callbacks are out (no target)",
        ),
        _untargeted(
            f"Burst of {config.burst} exports, no webhook, against itself: exports delivered",
            again, base, "same burst, no webhook",
            "the same burst twice in every round (A/A): how far this machine moves the ratio with nothing "
            "changed, the noise floor of the rows above (no target)",
        ),
    ]


def _untargeted(name: str, ours: list[float], base: list[float], baseline_name: str, note: str) -> Row:
    """A row shown beside the target's, compared with its own baseline of the same run."""
    return Row(
        name=name,
        ours=Sample(ours, "exports/s"),
        baseline=Sample(base, "exports/s"),
        baseline_name=baseline_name,
        ratio=statistics.median(ours) / statistics.median(base),
        note=note,
        pair_ratios=[o / b for o, b in zip(ours, base, strict=True)],
    )


def _worker() -> None:
    """``worker.main()``, with or without the SENT callback sent by the deliver activity."""
    import worker
    from workflows.policies import Policies

    worker.main(policies=Policies(webhook_sent_with_delivery=os.environ[WORKER_ENV] == "deployed"))


if __name__ == "__main__":
    if os.environ.get(WORKER_ENV):  # started by Workers from webhook_rows
        _worker()
