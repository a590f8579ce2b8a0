"""Rendering: a typical 500-line draft, and the line rate of the batched large-draft path."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
import uuid

from benchmarks.measure import Row, Sample
from dropzone.export_v1 import render_export, stream_validated_export, validate_draft
from tests.helpers import make_draft


def render_500_row(runs: int, calls_per_run: int = 200, max_ms: float = 2.0) -> Row:
    """Median over ``calls_per_run`` calls, ``runs`` times; the draft is a dict, as an activity gets it."""
    draft = make_draft(org_id=uuid.uuid4(), lines=500)
    for _ in range(20):
        render_export(validate_draft(draft))  # warm-up
    medians = []
    for _ in range(runs):
        times = []
        for _ in range(calls_per_run):
            start = time.perf_counter()
            render_export(validate_draft(draft))
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times) * 1000)
    ours = Sample(medians, "ms")
    return Row(
        name="Validate + render a 500-line draft",
        ours=ours,
        target=f"≤ {max_ms:g} ms",
        met=ours.median <= max_ms,
        note=f"median of {calls_per_run} calls per run; values are the runs' medians",
    )


def large_draft_bytes(lines: int) -> bytes:
    draft = make_draft(org_id=uuid.uuid4(), lines=lines)
    return json.dumps(draft, separators=(",", ":")).encode()


def render_large_row(lines: int, runs: int, min_rate: float = 100_000) -> Row:
    """validate + render + sha256 of a large draft held as JSON bytes, output discarded."""
    raw = large_draft_bytes(lines)
    rates = []
    size = 0
    for _ in range(runs):
        digest = hashlib.sha256()
        start = time.perf_counter()
        head = stream_validated_export(raw, digest.update)
        rates.append(head.line_count / (time.perf_counter() - start))
    size = len(render_export(validate_draft(raw))) if lines <= 20_000 else 0
    ours = Sample(rates, "lines/s")
    note = f"{len(raw) / 1e6:.0f} MB of draft JSON in memory → export bytes hashed (sha256)"
    if size:
        note += f"; {size / 1e6:.1f} MB out"
    return Row(
        name=f"Render a {lines:,}-line draft (batched path)",
        ours=ours,
        target=f"≥ {min_rate:,.0f} lines/s",
        met=ours.median >= min_rate,
        note=note,
    )
