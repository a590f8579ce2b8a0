"""CI smoke runs of the embedded-stack benchmarks: they must keep working (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", ["devstack_cold_start.py", "demo_batch.py"])
def test_benchmark_smoke_run(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        check=False, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    # A Markdown table: header, separator, one row with a measured number in every timing cell.
    assert len(table) == 3 and all(line.count("|") == 8 for line in table), result.stdout
    assert table[1].startswith("| --- |") and any(ch.isdigit() for ch in table[2].split("|")[3]), result.stdout
