"""Figures of the last fault run, for the README's "Reliability" section.

Each chaos test records what it did (exports, faults injected by kind, lost,
duplicated, partial reads) under its own name in ``chaos-report.json`` at the
project root (ignored by git); ``python -m tests.chaos.report`` prints them
as a Markdown table.
"""

from __future__ import annotations

import fcntl
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.chaos import scale

REPORT = Path(__file__).resolve().parents[2] / "chaos-report.json"


def record(test: str, **figures: Any) -> None:
    figures = {**figures, "mode": "full" if scale.FULL else "reduced",
               "recorded_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    REPORT.touch(exist_ok=True)
    with REPORT.open("r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        data = json.loads(text) if text.strip() else {}
        data[test] = figures
        handle.seek(0)
        handle.truncate()
        json.dump(data, handle, indent=2, sort_keys=True, default=str)


def markdown(data: dict[str, Any]) -> str:
    rows = [
        "| test | mode | exports | faults injected | lost | duplicated | partial reads |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    totals: Counter[str] = Counter()
    faults_total: Counter[str] = Counter()
    for test, f in sorted(data.items()):
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(f.get("faults", {}).items())) or "—"
        faults_total.update(f.get("faults", {}))
        for key in ("exports", "lost", "duplicated", "partial_reads"):
            totals[key] += int(f.get(key, 0))
        rows.append(
            f"| {test} | {f.get('mode', '?')} | {f.get('exports', 0)} | {faults} | {f.get('lost', 0)} | "
            f"{f.get('duplicated', 0)} | {f.get('partial_reads', 0)} |"
        )
    rows.append(
        f"| **all** | | **{totals['exports']}** | **{sum(faults_total.values())} faults** | "
        f"**{totals['lost']}** | **{totals['duplicated']}** | **{totals['partial_reads']}** |"
    )
    return "\n".join(rows)


if __name__ == "__main__":
    if not REPORT.exists():
        sys.exit("no chaos-report.json yet: run pytest -m chaos first")
    print(markdown(json.loads(REPORT.read_text(encoding="utf-8"))))
