"""Run every benchmark and write the results table.

    python -m benchmarks.run --out benchmarks/RESULTS.md     # full run (~25 min on 2 cores)
    python -m benchmarks.run --smoke                         # seconds-scale sizes: do they still run?

Every figure that has a limit is compared with the best tool doing the same
work on this machine in the same run (OpenSSH's sftp, a raw HTTP PUT, a bare
Temporal workflow), because machines are noisy and ratios hold. Timed figures
are medians of at least 5 runs (smoke: 1–2) with their min–max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from benchmarks.bench_api import api_rows
from benchmarks.bench_codec import codec_rows
from benchmarks.bench_doors import door_rows
from benchmarks.bench_e2e import E2EConfig, e2e_rows
from benchmarks.bench_large import large_export_rows
from benchmarks.bench_render import render_500_row, render_large_row
from benchmarks.bench_ftps import ftps_rows
from benchmarks.bench_transfer import s3_rows, sftp_rows
from benchmarks.bench_waiting import FULL as WAITING_FULL
from benchmarks.bench_waiting import SMOKE as WAITING_SMOKE
from benchmarks.bench_waiting import WaitingConfig, waiting_rows
from benchmarks.bench_webhooks import WebhookBenchConfig, webhook_rows
from benchmarks.measure import Row, Sample
from benchmarks.stack import stack

HERE = Path(__file__).resolve().parent
# Other helpers' benchmark scripts (dev stack start-up, demo); run as they are.
EXTERNAL_PATTERNS = ("devstack_*.py", "demo_*.py")


@dataclass(frozen=True)
class Plan:
    runs: int
    render_calls: int
    large_lines: int
    large_runs: int
    door_lines: int  # the seed-scale draft through every door (benchmarks/bench_doors.py)
    door_runs: int
    s3_mb: list[int]
    sftp_mb: list[int]
    ftps_mb: list[int]
    api_pushes: int
    e2e: E2EConfig
    webhooks: WebhookBenchConfig
    waiting: WaitingConfig


FULL = Plan(
    runs=7,
    render_calls=200,
    large_lines=300_000,
    large_runs=5,
    door_lines=600_000,
    door_runs=3,
    s3_mb=[100],
    sftp_mb=[10, 100],
    ftps_mb=[100],
    api_pushes=300,
    e2e=E2EConfig(burst=300, runs=5, single_runs=15, worker_counts=[1, 2, 4], ack_runs=10, ack_intervals=[1, 5]),
    webhooks=WebhookBenchConfig(burst=300, runs=5),
    waiting=WAITING_FULL,
)
SMOKE = Plan(
    runs=1,
    render_calls=20,
    large_lines=20_000,
    large_runs=1,
    door_lines=5_000,
    door_runs=1,
    s3_mb=[20],
    sftp_mb=[2],
    ftps_mb=[2],
    api_pushes=10,
    e2e=E2EConfig(burst=10, runs=1, single_runs=1, worker_counts=[1], ack_runs=1, ack_intervals=[1]),
    webhooks=WebhookBenchConfig(burst=10, runs=1),
    waiting=WAITING_SMOKE,
)


def machine() -> list[str]:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("temporalio", "pydantic", "paramiko", "boto3", "msgspec")
    )
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip() if shutil.which("ssh") else "?"
    return [
        f"- CPU: {os.cpu_count()} cores, {cpu}",
        f"- Memory: {mem_kb / 1024 / 1024:.1f} GiB",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
        f"- Libraries: {versions}; {ssh}",
    ]


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def external_benchmarks(smoke: bool) -> list[str]:
    """Run the other helpers' ``devstack_*``/``demo_*`` scripts; their output goes in verbatim."""
    lines: list[str] = []
    for pattern in EXTERNAL_PATTERNS:
        for path in sorted(HERE.glob(pattern)):
            module = f"benchmarks.{path.stem}"
            argv = [sys.executable, "-m", module] + (["--smoke"] if smoke else [])
            env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
            result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, cwd=HERE.parent)
            if result.returncode != 0:
                raise RuntimeError(f"{module} failed ({result.returncode}):\n{result.stderr[-3000:]}")
            lines += ["", f"### {module}", "", result.stdout.strip()]
    return lines


def table(rows: list[Row]) -> list[str]:
    out = [
        "| benchmark | ours | baseline (same run) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        base = f"{row.baseline_name}: {row.baseline.text()}" if row.baseline else "—"
        met = "—" if row.met is None else ("yes" if row.met else "**NO**")
        out.append(f"| {row.name} | {row.ours.text()} | {base} | {row.ratio_text()} | {row.target or '—'} | {met} |")
    return out


def notes(rows: list[Row]) -> list[str]:
    return [f"- **{row.name}**: {row.note}" for row in rows if row.note]


def scaling_lines(scaling: dict[int, Sample]) -> list[str]:
    if not scaling:
        return []
    one = scaling[min(scaling)].median
    out = ["", "## Scaling with worker processes (same burst, same machine)", ""]
    out += ["| worker processes | exports/s | vs 1 worker |", "| --- | --- | --- |"]
    for n in sorted(scaling):
        out.append(f"| {n} | {scaling[n].text()} | {scaling[n].median / one:.2f}× |")
    return out


def cpu_lines(cpu_ms: dict[str, dict[str, float]]) -> list[str]:
    """Where the CPU of one export goes (1 worker, burst): what bounds throughput on one machine."""
    if "real" not in cpu_ms:
        return []
    names = list(cpu_ms["real"])
    out = ["", "## CPU per export during a burst (1 worker; ms of CPU, median of the runs)", ""]
    out += ["| process | real pipeline | bare workflow |", "| --- | --- | --- |"]
    for name in names:
        bare = cpu_ms.get("bare", {}).get(name)
        out.append(f"| {name} | {cpu_ms['real'][name]:.1f} | {'—' if bare is None else f'{bare:.1f}'} |")
    real_total = sum(cpu_ms["real"].values())
    bare_total = sum(cpu_ms.get("bare", {}).values())
    out.append(f"| **total** | **{real_total:.1f}** | **{bare_total:.1f}** |")
    cores = os.cpu_count() or 1
    out += [
        "",
        f"With {cores} cores the machine can give at most {cores * 1000:.0f} ms of CPU per second, so CPU alone caps "
        f"the real pipeline near {cores * 1000 / real_total:.0f} exports/s and the bare workflow near "
        f"{cores * 1000 / max(bare_total, 0.001):.0f}/s on this machine (one worker process can use at most one core "
        "for Python code: the GIL).",
    ]
    return out


def run(plan: Plan, smoke: bool) -> str:
    started = datetime.now(timezone.utc)
    load_before = load()
    t0 = time.monotonic()
    rows: list[Row] = [render_500_row(max(plan.runs, 2), plan.render_calls)]
    rows.append(render_large_row(plan.large_lines, max(plan.large_runs, 1)))
    scaling: dict[int, Sample] = {}
    cpu_ms: dict[str, dict[str, float]] = {}
    with stack() as s:
        rows += s3_rows(s, plan.s3_mb, plan.runs, min_ratio=0.75)
        rows += sftp_rows(s, plan.sftp_mb, plan.runs, targets={10: 0.70, 100: 0.75})
        rows += ftps_rows(plan.ftps_mb, plan.runs, min_ratio=0.90)
        rows += large_export_rows(s, plan.large_lines, plan.large_runs)
        rows += asyncio.run(door_rows(s, plan.door_lines, plan.door_runs))
        e2e = asyncio.run(e2e_rows(s, plan.e2e))
        rows += e2e.rows
        rows += asyncio.run(codec_rows(s, plan.e2e))
        rows += asyncio.run(api_rows(s, plan.api_pushes, min(plan.runs, 5)))
        rows += asyncio.run(webhook_rows(s, plan.webhooks))
        rows += asyncio.run(waiting_rows(s, plan.waiting))
        scaling, cpu_ms = e2e.scaling, e2e.cpu_ms
    external = external_benchmarks(smoke)
    minutes = (time.monotonic() - t0) / 60
    title = "Benchmark results" + (" (SMOKE: tiny sizes, not meaningful)" if smoke else "")
    lines = [
        f"# {title}",
        "",
        f"`python -m benchmarks.run{' --smoke' if smoke else ''}`, {started:%Y-%m-%d %H:%M} UTC, {minutes:.1f} min.",
        "",
        *machine(),
        f"- Load average (1, 5, 15 min) before: {load_before}; after: {load()}",
        "",
        "Ratios compare with the baseline measured in the same run, alternating runs.",
        "",
        *table(rows),
        *scaling_lines(scaling),
        *cpu_lines(cpu_ms),
        "",
        "## What each figure measures",
        "",
        *notes(rows),
        *external,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run each: only checks that all still runs")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    args = parser.parse_args()
    report = run(SMOKE if args.smoke else FULL, args.smoke)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(report)
    failed = re.findall(r"\*\*NO\*\*", report)
    if failed and not args.smoke:
        print(f"{len(failed)} target(s) not met", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Temporal's core threads can abort interpreter finalisation (temporalio/sdk-python#300).
    os._exit(0)


if __name__ == "__main__":
    main()
