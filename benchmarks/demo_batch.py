"""The demo's batch: `dropzone demo --exit --count 20`, timed from the first export to the last ack.

The batch time is the one the demo prints ("20/20 exports ACKED in X s"): it
starts once the stack is up and the worker polls, and covers starting 20
workflows, rendering, storing, delivering, the ERP simulator's answers, the
rejected order's retry and every ack being processed.  Each run uses a fresh
data directory and free ports.  Target: <= 30 s on 2 cores.

    python benchmarks/demo_batch.py              # 3 runs of 20 exports
    python benchmarks/demo_batch.py --count 50 --runs 1
    python benchmarks/demo_batch.py --smoke      # 1 run of 2 exports, for CI

Prints a Markdown table: header and one row (--no-header: the row alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(\d+)/(\d+) exports ACKED in ([0-9.]+) s")
TARGET_SECONDS = 30.0


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def one_run(count: int, data_dir: Path) -> tuple[float, float]:
    """(batch seconds as the demo measured them, wall seconds of the whole command)."""
    temporal, ui, s3 = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
    env["DROPZONE_ENV_FILE"] = str(data_dir.parent / "absent.env")
    command = [sys.executable, "-m", "starter.cli", "demo", "--exit", "--count", str(count),
               "--data-dir", str(data_dir), "--temporal-port", str(temporal), "--ui-port", str(ui),
               "--s3-port", str(s3)]
    began = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, check=False, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    wall = time.monotonic() - began
    match = SUMMARY.search(result.stdout)
    if result.returncode != 0 or match is None or match.group(1) != match.group(2):
        raise SystemExit(f"demo failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}")
    return float(match.group(3)), wall


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="one run of 2 exports (CI)")
    parser.add_argument("--no-header", action="store_true", help="print only the row (to append to a table)")
    args = parser.parse_args()
    runs, count = (1, 2) if args.smoke else (max(1, args.runs), args.count)

    batch, wall = [], []
    with tempfile.TemporaryDirectory(prefix="dz-bench-demo-") as tmp:
        for n in range(runs):
            seconds, total = one_run(count, Path(tmp) / f"run{n}")
            batch.append(seconds)
            wall.append(total)
            print(f"run {n + 1}/{runs}: batch {seconds:.1f} s, whole command {total:.1f} s", file=sys.stderr)

    if not args.no_header:
        print("| benchmark | runs | exports | batch median (min–max) | whole command | target | machine |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    verdict = "met" if statistics.median(batch) <= TARGET_SECONDS else "MISSED"
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    print(f"| `dropzone demo` batch, first export to last ack | {runs} | {count} | {summary(batch)} | "
          f"{summary(wall)} | ≤ {TARGET_SECONDS:.0f} s ({verdict}) | {machine} |")


if __name__ == "__main__":
    main()
