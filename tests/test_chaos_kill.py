"""Crash at every step: the worker is SIGKILLed at each side effect and restarted.

Real everything: the Temporal dev server, PostgreSQL, SeaweedFS and OpenSSH
(internal-sftp). The worker is ``tests.chaos.faulty_worker`` — the production
worker with adapters that kill the process right after an S3 PUT, mid-upload,
after the final rename but before SENT is recorded, and between recording an
ack and moving its file. A supervisor restarts it each time, as systemd or
Kubernetes would. An ERP stand-in answers every export file with an ack while
an observer reads every final name every few milliseconds.

Afterwards, for every export: ACKED; exactly one row, one final file with the
row's sha256, one S3 object with that sha256; its ack in ``processed/``; no
``.tmp`` anywhere; nothing rejected; the observer never read a partial file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from temporalio.client import Client

from dropzone.ledger import Ledger
from starter.api import start_export, wait_for_result
from tests.chaos import scale
from tests.chaos.faulty_worker import POINTS
from tests.chaos.observer import AckResponder, PartialReadObserver
from tests.chaos.report import record
from tests.conftest import add_connection
from tests.fixtures.operators import REPO_ROOT
from tests.helpers import make_draft, sha256_of

pytestmark = [pytest.mark.chaos, pytest.mark.asyncio(loop_scope="session")]

EXPORTS = scale.size(full=60, reduced=16)
KILLS_PER_POINT = scale.size(full=6, reduced=1)
KILL_PROBABILITY = 0.5
# Big enough for several upload pieces (16 KiB each), so a kill can land mid-upload.
LINES_PER_DRAFT = 300
# Production waits 30-60 s before declaring a dead worker's activity lost; the
# faulty worker runs with these Policies fields shortened (seconds, and retry
# backoff capped at 2 s) so each kill costs seconds. Nothing else changes.
TIMEOUTS = {
    "ledger_timeout": 6,
    "render_heartbeat_timeout": 8,
    "deliver_heartbeat_timeout": 8,
    "ack_poll_timeout": 6,
    "listener_scan_heartbeat_timeout": 6,
    "ensure_listener_timeout": 6,
}
RUN_DEADLINE = scale.size(full=900, reduced=300)


class Supervisor:
    """Keeps one faulty worker running: restarts it whenever it dies."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self._env = env
        self._log_dir = log_dir
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.exits: list[int] = []
        self.starts = 0

    async def run(self) -> None:
        while not self._stopping:
            self.starts += 1
            log = (self._log_dir / f"worker-{self.starts}.log").open("wb")
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.chaos.faulty_worker",
                env=self._env, cwd=REPO_ROOT, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            )
            code = await self._process.wait()
            log.close()
            self.exits.append(code)
            if code != -signal.SIGKILL and not self._stopping:
                raise AssertionError(f"worker exited with {code}, not by a planned kill:\n{self.log_tail()}")

    async def stop(self) -> None:
        self._stopping = True
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self._process.wait(), 60)

    def log_tail(self) -> str:
        path = self._log_dir / f"worker-{self.starts}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _bucket_keys(object_store, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    pages = object_store._client.get_paginator("list_objects_v2").paginate(Bucket=object_store.bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


async def test_kill_9_at_every_side_effect_loses_and_duplicates_nothing(
    client: Client, dropzone_env, openssh_server, ledger: Ledger, object_store, tmp_path: Path
):
    org_id = uuid.uuid4()
    config = openssh_server.config(poll_interval_seconds=1)
    connection_id = add_connection(ledger, org_id, config)
    export_dir = openssh_server.local_path(config["export_path"])
    ack_dir = openssh_server.local_path(config["ack_path"])

    markers = tmp_path / "kills"
    markers.mkdir()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "kills": {point: KILLS_PER_POINT for point in POINTS},
        "probability": KILL_PROBABILITY,
        "timeouts": TIMEOUTS,
    }))
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    env = {
        **dropzone_env,
        "DROPZONE_TASK_QUEUE": queue,
        "DROPZONE_LOG_FORMAT": "json",
        "CHAOS_PLAN": str(plan),
        "CHAOS_MARKERS": str(markers),
    }
    supervisor = Supervisor(env, tmp_path)
    drafts = [make_draft(org_id=org_id, lines=LINES_PER_DRAFT) for _ in range(EXPORTS)]

    started = time.monotonic()
    with PartialReadObserver([export_dir]) as observer, AckResponder([(export_dir, ack_dir)]):
        supervising = asyncio.create_task(supervisor.run())
        for draft in drafts:
            await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
        results = await asyncio.wait_for(
            asyncio.gather(*(wait_for_result(client, d["draft_order_id"]) for d in drafts)), RUN_DEADLINE
        )
        if supervising.done():
            supervising.result()  # an unplanned worker exit fails here, with its log
        await supervisor.stop()
        supervising.cancel()
    elapsed = time.monotonic() - started
    seen = observer.report

    kills = Counter(name.rsplit(".", 1)[0] for name in os.listdir(markers))
    # Every planned kill happened, and each one really killed the worker.
    assert kills == {point: KILLS_PER_POINT for point in POINTS}, kills
    assert supervisor.exits.count(-signal.SIGKILL) == sum(kills.values())

    assert [r.status for r in results] == ["ACKED"] * EXPORTS, [r for r in results if r.status != "ACKED"]
    rows = ledger.list_exports(org_id=org_id, limit=10 * EXPORTS)
    assert sorted(str(r.draft_order_id) for r in rows) == sorted(d["draft_order_id"] for d in drafts)
    assert {r.status for r in rows} == {"ACKED"}
    assert {r.id for r in rows} == {r.export_id for r in results}

    final_files = sorted(p.name for p in export_dir.iterdir())
    assert final_files == sorted(r.filename for r in rows), "a .tmp or an extra file was left behind"
    for row in rows:
        assert sha256_of(export_dir / row.filename) == row.sha256
        stored = object_store.head(row.export_storage_key)
        assert stored is not None and stored.sha256 == row.sha256
    assert sorted(_bucket_keys(object_store, f"exports/{org_id}/")) == sorted(r.export_storage_key for r in rows)

    processed = sorted(p.name for p in (ack_dir / "processed").iterdir())
    assert processed == sorted(f"ack_{r.filename}" for r in rows)
    assert [p.name for p in ack_dir.iterdir() if p.is_file()] == []
    assert not (ack_dir / "error").exists()
    assert ledger.list_ack_rejections(org_id=org_id) == []

    # Each upload killed midway really left a .tmp behind, which a retry then removed.
    killed_uploads = [(markers / name).read_text().rsplit("/", 1)[-1] for name in os.listdir(markers)
                      if name.startswith("mid_upload.")]
    for filename in killed_uploads:
        assert any(name.startswith(f"{filename}.") for name in seen.tmp_names), filename

    assert seen.partial == [] and seen.rewritten == []
    assert {Path(p).name for p in seen.files} == set(final_files)

    record(
        "kill -9 at every side effect",
        exports=EXPORTS,
        faults={f"kill -9 {point}": n for point, n in kills.items()},
        worker_restarts=supervisor.starts - 1,
        lost=EXPORTS - sum(r.status == "ACKED" for r in rows),
        duplicated=len(rows) - EXPORTS,
        partial_reads=len(seen.partial),
        observer_scans=seen.scans,
        observer_reads=seen.reads,
        tmp_files_seen=len(seen.tmp_names),
        seconds=round(elapsed, 1),
    )
