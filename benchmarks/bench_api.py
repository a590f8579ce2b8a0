"""Pushes over the HTTP API vs direct ``start_export`` calls, same run, same servers.

"Ours": a ``dropzone api`` process (uvicorn, as deployed) takes N pushes from 20
concurrent HTTP clients (httpx, keep-alive): token check, connection check, body
spooled and split, draft validated, workflow started. "Baseline": the same N
drafts given to ``starter.api.start_export`` in this process, 20 at a time. No
worker runs, so both measure the door alone (every run stays open, waiting for
its first activity). Runs alternate. Targets: throughput ≥ 0.7×, p50 ≤ 1.5×.

    python -m benchmarks.bench_api [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from benchmarks.bench_e2e import temporal
from benchmarks.measure import Row, Sample
from benchmarks.stack import Stack, stack
from dropzone.ledger.tokens import ApiTokens
from starter.api import start_export
from starter.devstack import free_ports
from tests.helpers import make_draft

CONCURRENCY = 20
DRAFT_LINES = 500
START_DEADLINE = 90.0


@asynccontextmanager
async def api_process(stack: Stack, temporal_address: str, task_queue: str) -> AsyncIterator[str]:
    """``dropzone api`` on a free port, configured by DROPZONE_* variables; its base URL."""
    (port,) = free_ports(1)
    env = stack.worker_env(temporal_address, task_queue, DROPZONE_API_PORT=str(port))
    log = (stack.base / f"api-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "starter.cli", "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dropzone api did not start; see {log.name}")
                try:
                    if (await http.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


async def _concurrently(n: int, call: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """``call(i)`` for i < n, CONCURRENCY at a time: (calls per second, each call's seconds)."""
    latencies: list[float] = []
    queue = iter(range(n))

    async def client() -> None:
        for i in queue:
            began = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - started), latencies


class ApiBench:
    def __init__(self, stack: Stack, env: Any, url: str, task_queue: str) -> None:
        self.client, self.url, self.task_queue = env.client, url, task_queue
        self.ledger = stack.ledger()
        self.store = stack.object_store()
        self.org_id = uuid.uuid4()
        export_dir = stack.base / f"api-dropzone-{uuid.uuid4().hex[:6]}"
        export_dir.mkdir()
        self.connection_id = stack.add_connection(
            self.ledger, self.org_id, {"mode": "filesystem", "export_path": str(export_dir)}
        )
        self.token = ApiTokens(self.ledger.engine).create(self.org_id, "benchmark")[0]
        self.template = make_draft(org_id=self.org_id, lines=DRAFT_LINES)

    def drafts(self, n: int) -> list[dict[str, Any]]:
        return [dict(self.template, draft_order_id=str(uuid.uuid4())) for _ in range(n)]

    async def direct(self, n: int) -> tuple[float, list[float]]:
        drafts = self.drafts(n)

        async def call(i: int) -> None:
            await start_export(self.client, erp_connection_id=self.connection_id, draft=drafts[i],
                               store=self.store, task_queue=self.task_queue)

        return await _concurrently(n, call)

    async def over_http(self, n: int) -> tuple[float, list[float]]:
        drafts = self.drafts(n)
        # A backend holds its JSON already: bodies are encoded before the clock starts,
        # as the baseline's drafts are built before it.
        bodies = [json.dumps({"erp_connection_id": str(self.connection_id), "draft": d}).encode() for d in drafts]
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, limits=limits, timeout=120.0) as http:

            async def call(i: int) -> None:
                response = await http.post(f"/draft-orders/{drafts[i]['draft_order_id']}/push", content=bodies[i])
                if response.status_code != 202:
                    raise RuntimeError(f"push answered {response.status_code}: {response.text[:500]}")

            return await _concurrently(n, call)


async def api_rows(stack: Stack, pushes: int, runs: int) -> list[Row]:
    task_queue = f"bench-api-{uuid.uuid4().hex[:8]}"
    async with temporal(stack) as env:
        address = env.client.service_client.config.target_host
        async with api_process(stack, address, task_queue) as url:
            bench = ApiBench(stack, env, url, task_queue)
            await bench.direct(min(20, pushes))  # warm both: imports, pools, connections
            await bench.over_http(min(20, pushes))
            ours_rate, base_rate, ours_lat, base_lat = [], [], [], []
            for _ in range(runs):
                rate, latencies = await bench.direct(pushes)
                base_rate.append(rate)
                base_lat.append(statistics.median(latencies))
                rate, latencies = await bench.over_http(pushes)
                ours_rate.append(rate)
                ours_lat.append(statistics.median(latencies))
    throughput = statistics.median(ours_rate) / statistics.median(base_rate)
    p50 = statistics.median(ours_lat) / statistics.median(base_lat)
    note = (f"{pushes} drafts of {DRAFT_LINES} lines, {CONCURRENCY} concurrent clients; no worker (the door alone); "
            "a separate `dropzone api` process vs start_export in the benchmark's process")
    return [
        Row(
            name=f"{pushes} pushes over the HTTP API",
            ours=Sample(ours_rate, "pushes/s"),
            baseline=Sample(base_rate, "starts/s"),
            baseline_name=f"direct start_export, {CONCURRENCY} at a time",
            ratio=throughput, target="≥ 0.70×", met=throughput >= 0.7, note=note,
            pair_ratios=[o / b for o, b in zip(ours_rate, base_rate, strict=True)],
        ),
        Row(
            name="Push over the HTTP API, p50 latency under that load",
            ours=Sample([v * 1000 for v in ours_lat], "ms"),
            baseline=Sample([v * 1000 for v in base_lat], "ms"),
            baseline_name="direct start_export",
            ratio=p50, target="≤ 1.5×", met=p50 <= 1.5,
            note="median per call within each run, then the median over the runs",
            pair_ratios=[o / b for o, b in zip(ours_lat, base_lat, strict=True)],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    with stack() as s:
        rows = asyncio.run(api_rows(s, 10 if args.smoke else 300, 1 if args.smoke else 5))
    for row in rows:
        print(f"{row.name}: {row.ours.text()} vs {row.baseline.text() if row.baseline else '-'} "
              f"= {row.ratio_text()} (target {row.target})")


if __name__ == "__main__":
    main()
