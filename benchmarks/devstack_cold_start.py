"""Cold start of `dropzone dev`: from the command to "worker polling", on a new data directory.

Each run uses a fresh data directory and free ports, so every server starts
from nothing (initdb, Temporal's SQLite schema, SeaweedFS volumes).  Also
measured: a warm start on the same directory, and how long Ctrl-C takes to
stop everything.  Target: median cold start <= 15 s on 2 cores.

    python benchmarks/devstack_cold_start.py            # 5 runs
    python benchmarks/devstack_cold_start.py --runs 9
    python benchmarks/devstack_cold_start.py --smoke    # 1 cold run, for CI

Prints a Markdown table: header and one row (--no-header: the row alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
READY = "worker polling"
DEADLINE_SECONDS = 180.0
TARGET_SECONDS = 15.0


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_and_stop(data_dir: Path, log: Path) -> tuple[float, float]:
    """(seconds until the worker polls, seconds from Ctrl-C to exit)."""
    temporal, ui, s3 = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
    env["DROPZONE_ENV_FILE"] = str(data_dir.parent / "absent.env")
    command = [sys.executable, "-m", "starter.cli", "dev", "--data-dir", str(data_dir),
               "--temporal-port", str(temporal), "--ui-port", str(ui), "--s3-port", str(s3)]
    began = time.monotonic()
    with log.open("ab") as stderr:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until the line or EOF
            if READY in line:
                break
            if time.monotonic() - began > DEADLINE_SECONDS:
                raise SystemExit(f"no {READY!r} within {DEADLINE_SECONDS} s; see {log}")
        else:
            raise SystemExit(f"dropzone dev exited with {proc.wait()} before {READY!r}; see {log}")
        ready = time.monotonic() - began
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.stdout.read()
        code = proc.wait(60)
        stopped = time.monotonic() - interrupted
        if code != 0:
            raise SystemExit(f"dropzone dev exited with {code} after Ctrl-C; see {log}")
        return ready, stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} s ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one cold run, no warm start (CI)")
    parser.add_argument("--no-header", action="store_true", help="print only the row (to append to a table)")
    args = parser.parse_args()
    runs = 1 if args.smoke else max(1, args.runs)

    cold, warm, stop = [], [], []
    with tempfile.TemporaryDirectory(prefix="dz-bench-dev-") as tmp:
        for n in range(runs):
            data_dir = Path(tmp) / f"run{n}"
            ready, stopped = start_and_stop(data_dir, Path(tmp) / "stderr.log")
            cold.append(ready)
            stop.append(stopped)
            if not args.smoke:
                ready, stopped = start_and_stop(data_dir, Path(tmp) / "stderr.log")
                warm.append(ready)
                stop.append(stopped)
            print(f"run {n + 1}/{runs}: cold {cold[-1]:.1f} s" + (f", warm {warm[-1]:.1f} s" if warm else ""),
                  file=sys.stderr)

    if not args.no_header:
        print("| benchmark | runs | cold start median (min–max) | warm start | Ctrl-C to exit | target | machine |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    verdict = "met" if statistics.median(cold) <= TARGET_SECONDS else "MISSED"
    machine = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    print(f"| `dropzone dev` until the worker polls | {runs} | {summary(cold)} | "
          f"{summary(warm) if warm else '-'} | {summary(stop)} | ≤ {TARGET_SECONDS:.0f} s ({verdict}) | {machine} |")


if __name__ == "__main__":
    main()
