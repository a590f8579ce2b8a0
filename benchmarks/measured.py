"""Generated seed-scale drafts and processes measured by the kernel (peak RSS from ``wait4``).

Used by benchmarks/bench_doors.py and by the large-draft door tests
(tests/test_large_doors*.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import make_draft

MiB = 1024 * 1024
LINES_PLACEHOLDER = '"@@LINES@@"'
_FILL = 1000  # lines formatted per write


# ----------------------------------------------------------------- generated drafts


@dataclass(frozen=True)
class DraftFile:
    path: Path
    draft_order_id: str
    org_id: str
    lines: int
    size: int


def write_draft(
    path: Path,
    *,
    org_id: uuid.UUID,
    lines: int,
    bad_index: int | None = None,
    **header: Any,
) -> DraftFile:
    """A compact ``make_draft``-shaped draft of ``lines`` lines, written without building it.

    Line n is ``make_draft``'s (``INT-<n>``, qty ``n % 50 + 1``); ``bad_index`` gets qty 0,
    which the models refuse (``lines[bad_index].qty: must be greater than 0``).
    """
    draft = make_draft(org_id=org_id, lines=1, **header)
    template = {**draft["lines"][0], "line_no": -1, "internal_sku": "@SKU@", "qty": -2}
    # json.dumps's default layout, as a backend's json.dumps(draft) writes it.
    line = json.dumps(template).replace("%", "%%")
    line = line.replace('"line_no": -1', '"line_no": %d').replace('"@SKU@"', '"INT-%06d"')
    line_bytes = line.replace('"qty": -2', '"qty": %d').encode()
    draft["lines"] = "@@LINES@@"
    head, tail = json.dumps(draft).split(LINES_PLACEHOLDER)
    with open(path, "wb") as out:
        out.write(head.encode() + b"[")
        for start in range(1, lines + 1, _FILL):
            numbers = range(start, min(start + _FILL, lines + 1))
            chunk = b", ".join(
                line_bytes % (n, n, 0 if n - 1 == bad_index else n % 50 + 1) for n in numbers
            )
            out.write(chunk if start == 1 else b", " + chunk)
        out.write(b"]" + tail.encode())
    return DraftFile(path, draft["draft_order_id"], str(org_id), lines, path.stat().st_size)


# ----------------------------------------------------------------- measured processes


@dataclass(frozen=True)
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes (ru_maxrss of the process and its reaped children: the process here)
    seconds: float


def run_measured(argv: list[str], env: dict[str, str], *, timeout: float = 600, cwd: Path | None = None) -> Measured:
    """Run a process to its end; its own peak RSS from ``wait4``, not a sampled guess."""
    start = time.perf_counter()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"dz-measured-{uuid.uuid4().hex}"
    with open(f"{out_path}.out", "w+b") as out, open(f"{out_path}.err", "w+b") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    for suffix in (".out", ".err"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{out_path}{suffix}")
    return Measured(proc.returncode, stdout, stderr, usage.ru_maxrss * 1024, seconds)


class MeasuredServer:
    """A long-running process (erp-sim, the API) whose peak RSS is read when it is stopped."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def peak_now(self) -> int:
        """Its peak RSS so far (VmHWM), in bytes, while it runs."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmHWM for process {self.proc.pid}")

    def stop(self) -> int:
        """SIGINT (its Ctrl-C path), then the peak RSS in bytes."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while True:
            pid, _status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = 0
                return usage.ru_maxrss * 1024
            if time.monotonic() > deadline:
                self.proc.kill()
                _pid, _status, usage = os.wait4(self.proc.pid, 0)
                self.proc.returncode = -9
                return usage.ru_maxrss * 1024
            time.sleep(0.05)


def own_peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def own_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
