"""Repeated measurements, their medians and ranges, and the rows of the results table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Sample:
    """Several measurements of one quantity (seconds, MB/s, exports/s …)."""

    values: list[float]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, digits: int = 3) -> str:
        if not self.values:
            return "—"
        fmt = f"{{:.{digits}g}}"
        med = fmt.format(self.median)
        if len(self.values) == 1:
            return f"{med} {self.unit}"
        return f"{med} {self.unit} ({fmt.format(min(self.values))}–{fmt.format(max(self.values))}, n={len(self.values)})"


@dataclass
class Row:
    name: str
    ours: Sample
    baseline: Sample | None = None
    baseline_name: str = ""
    # ours ÷ baseline, of rates (higher is better) or of latencies (lower is better);
    # ``target`` says which way it must go.
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    pair_ratios: list[float] = field(default_factory=list)

    def ratio_text(self) -> str:
        if self.ratio is None:
            return "—"
        text = f"{self.ratio:.2f}×"
        if len(self.pair_ratios) > 1:
            text += f" ({min(self.pair_ratios):.2f}–{max(self.pair_ratios):.2f})"
        return text


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput_pair(
    name: str,
    ours: Callable[[], object],
    baseline: Callable[[], object],
    *,
    amount: float,
    unit: str,
    runs: int,
    baseline_name: str,
    min_ratio: float,
    note: str = "",
) -> Row:
    """Alternate ours/baseline ``runs`` times; ratio = our median rate / the baseline's."""
    ours_rates: list[float] = []
    base_rates: list[float] = []
    for _ in range(runs):
        ours_rates.append(amount / timed(ours))
        base_rates.append(amount / timed(baseline))
    ratio = statistics.median(ours_rates) / statistics.median(base_rates)
    return Row(
        name=name,
        ours=Sample(ours_rates, unit),
        baseline=Sample(base_rates, unit),
        baseline_name=baseline_name,
        ratio=ratio,
        target=f"≥ {min_ratio:.2f}×",
        met=ratio >= min_ratio,
        note=note,
        pair_ratios=[o / b for o, b in zip(ours_rates, base_rates, strict=True)],
    )
