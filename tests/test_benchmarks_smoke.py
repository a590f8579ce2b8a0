"""The benchmarks still run: ``python -m benchmarks.run --smoke`` end to end, tiny sizes.

No timed assertion: speed is what the full run's table reports. This only
proves every benchmark (real servers, worker processes, the bare workflow,
the large-draft child process, the other helpers' scripts) still works and
produces a complete table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_ROWS = [
    "Validate + render a 500-line draft",
    "Render a 20,000-line draft (batched path)",
    "S3 PUT 20 MB (ObjectStore.put) vs raw HTTP PUT",
    "SFTP deliver 2 MB (paramiko) vs OpenSSH `sftp put`",
    "FTPS deliver 2 MB (ftplib + checks) vs plain ftplib `storbinary`",
    "20,000-line draft_ref export: worker peak RSS growth",
    "Burst of 10 exports (500-line drafts), 1 worker",
    "One export alone: p50 latency, start → result",
    "Ack file → ACKED in the ledger, poll interval 1 s",
    "Burst of 10 exports, payload encryption on vs off",
    "One export alone, p50 start → result, payload encryption on vs off",
    "Burst of 10 exports with a webhook receiver: exports delivered",
    "Burst of 10 exports with a webhook receiver, SENT through the run's queue: exports delivered",
    "Burst of 10 exports with a webhook receiver: callbacks delivered too",
    "Burst of 10 exports, no webhook, against itself: exports delivered",
    "Waiting cost, 10 exports waiting (poll 5 s, 1 worker), CPU ms/s",
    "Waiting cost, 30 exports waiting (poll 5 s, 1 worker), CPU ms/s",
    "Ack file → ACKED (workflow result) with 30 waiting, poll 5 s",
]


def test_smoke_run_writes_a_complete_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = out.read_text(encoding="utf-8")
    assert report.startswith("# Benchmark results (SMOKE")
    assert "- CPU: " in report and "- Memory: " in report and "- Python " in report
    table = [line for line in report.splitlines() if line.startswith("| ")]
    for name in EXPECTED_ROWS:
        rows = [line for line in table if line.startswith(f"| {name} |")]
        assert len(rows) == 1, f"row {name!r} missing from:\n{report}"
        # Every row carries a measured number, not a placeholder.
        assert any(ch.isdigit() for ch in rows[0].split("|")[2]), rows[0]
