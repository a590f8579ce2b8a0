"""A 300,000-line draft_ref export through the real activities, in a worker-like process.

The parent stores the draft in SeaweedFS and opens the attempt; a fresh child
process builds the adapters the way ``worker.py`` does (from DROPZONE_*
settings), records its RSS, then runs ``inspect_draft``, ``render_and_store``
and ``deliver`` (to OpenSSH) under ``ActivityEnvironment`` and reports its peak
RSS (``ru_maxrss``) and timings as JSON. The parent checks the delivered bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from typing import Any

from benchmarks.measure import Row, Sample
from benchmarks.stack import Stack
from tests.helpers import make_draft

MiB = 1024 * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: dict[str, Any]) -> dict[str, Any]:
    from temporalio.testing import ActivityEnvironment

    from activities.exports import ExportActivities
    from dropzone.contracts import DeliverInput, DraftRef, RenderInput
    from dropzone.settings import load_settings
    from worker import build_adapters

    adapters = build_adapters(load_settings())
    acts = ExportActivities(adapters.ledger, adapters.store, adapters.connectors)
    env = ActivityEnvironment()
    # Warm, like a worker that has served before: its start-up ensure_bucket call,
    # one S3 and one database round trip (boto3's first request loads its
    # endpoint rules, a one-off ~100 MiB peak that is not the draft's doing).
    adapters.store.ensure_bucket()
    adapters.store.head(args["draft_ref"])
    adapters.ledger.get_export(args["export_id"])
    baseline = _rss_bytes()
    _reset_peak()
    start = time.perf_counter()
    summary = env.run(acts.inspect_draft, DraftRef(draft_ref=args["draft_ref"]))
    inspect_s = time.perf_counter() - start
    start = time.perf_counter()
    stored = env.run(acts.render_and_store, RenderInput(export_id=args["export_id"], draft_ref=args["draft_ref"]))
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    outcome = env.run(acts.deliver, DeliverInput(export_id=args["export_id"]))
    deliver_s = time.perf_counter() - start
    peak = _peak_rss_bytes()
    adapters.close()
    return {
        "baseline": baseline,
        "peak": peak,
        "lines": summary.line_count,
        "inspect_s": inspect_s,
        "render_s": render_s,
        "deliver_s": deliver_s,
        "size": stored.size_bytes,
        "sha256": stored.sha256,
        "path": outcome.dropzone_path,
    }


def large_export_rows(stack: Stack, lines: int, runs: int, max_growth_mib: float = 300) -> list[Row]:
    from activities.exports import ExportActivities
    from dropzone.connectors import default_registry
    from dropzone.contracts import OpenAttemptInput

    ledger = stack.ledger()
    store = stack.object_store()
    org_id = uuid.uuid4()
    raw_config = stack.sftp_config(ack_path=None)
    connection_id = stack.add_connection(ledger, org_id, raw_config)
    acts = ExportActivities(ledger, store, default_registry())
    growth, render_rates, deliver_rates, draft_mb, out_mb = [], [], [], 0.0, 0.0
    for _ in range(runs):
        draft = make_draft(org_id=org_id, lines=lines)
        body = json.dumps(draft, separators=(",", ":")).encode()
        key = f"drafts/{org_id}/{draft['draft_order_id']}/draft.json"
        store.put(key, body, sha256=hashlib.sha256(body).hexdigest(), size=len(body))
        draft_mb = len(body) / 1e6
        del draft, body
        attempt = acts.open_attempt(
            OpenAttemptInput(
                erp_connection_id=connection_id,
                draft_order_id=uuid.uuid4(),
                org_id=org_id,
                workflow_id=f"bench-large-{uuid.uuid4().hex[:8]}",
                workflow_run_id=uuid.uuid4().hex,
                run_seq=1,
            )
        )
        env = stack.worker_env("127.0.0.1:1", "unused")
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_large", json.dumps({"export_id": str(attempt.export_id), "draft_ref": key})],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"large export child failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        delivered = stack.sftp.local_path(result["path"])
        if hashlib.sha256(delivered.read_bytes()).hexdigest() != result["sha256"]:
            raise RuntimeError("delivered large export differs from the stored one")
        delivered.unlink()
        store.delete(key)
        store.delete(attempt.storage_key)
        growth.append((result["peak"] - result["baseline"]) / MiB)
        render_rates.append(result["lines"] / result["render_s"])
        deliver_rates.append(result["size"] / 1e6 / result["deliver_s"])
        out_mb = result["size"] / 1e6
    grown = Sample(growth, "MiB")
    return [
        Row(
            name=f"{lines:,}-line draft_ref export: worker peak RSS growth",
            ours=grown,
            target=f"≤ {max_growth_mib:g} MiB",
            met=grown.median <= max_growth_mib and max(growth) <= max_growth_mib,
            note=(
                f"inspect_draft + render_and_store + deliver in one worker-like process; {draft_mb:.0f} MB draft, "
                f"{out_mb:.0f} MB export; peak = VmHWM reset at the baseline = RSS of the warmed-up adapters"
            ),
        ),
        Row(
            name=f"{lines:,}-line draft_ref: render_and_store rate",
            ours=Sample(render_rates, "lines/s"),
            note="S3 GET of the draft, validate, render, sha256, spool, streamed PUT (the whole activity)",
        ),
        Row(
            name=f"{lines:,}-line draft_ref: deliver rate (S3 → OpenSSH)",
            ours=Sample(deliver_rates, "MB/s"),
            note="streams the object from SeaweedFS to the SFTP dropzone: write, fsync, verify, rename",
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))), flush=True)
    sys.stdout.flush()
    os._exit(0)
