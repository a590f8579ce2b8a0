"""A server restarted while several exports are in flight: OpenSSH, SeaweedFS, PostgreSQL.

See tests/server_faults/__init__.py for what every test here checks.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from dropzone.contracts import ExportResult
from dropzone.crypto import ConfigCipher
from dropzone.errors import DropzoneError
from dropzone.ledger import Ledger
from dropzone.object_store import ObjectStore
from starter.api import start_export
from tests.chaos.observer import AckResponder, PartialReadObserver
from tests.chaos.report import record
from tests.chaos.scale import size
from tests.conftest import add_connection
from tests.helpers import eventually, make_draft, sha256_of
from worker import Adapters
from tests.server_faults.support import (
    adapters_for,
    check_delivered_once,
    final_files,
    results_of,
    retried,
    running_worker,
    SFTP_CONNECT_TIMEOUT,
    SFTP_OPERATION_TIMEOUT,
    slow_down_source,
    Tally,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.chaos]


# ---------------------------------------------------------------------------
# b, c, d) a server restarted while several exports are in flight
# ---------------------------------------------------------------------------


@dataclass
class Outage:
    """Take a server away when the first export file lands, bring it back ``down_for`` later."""

    kind: str
    stop: Callable[[], None]
    start: Callable[[], None]
    down_for: float
    happened: int = 0

    async def inject(self, export_dir: Path, *, within: float) -> None:
        await eventually(lambda: final_files(export_dir), timeout=within, what="a first delivered file", every=0.02)
        # Blocking calls (pg_ctl, weed): off the event loop the worker runs on.
        await asyncio.to_thread(self.stop)
        self.happened += 1
        try:
            await asyncio.sleep(self.down_for)
        finally:
            await asyncio.to_thread(self.start)


async def start_staggered(
    client: Client, queue: str, connection_id: uuid.UUID, drafts: list[dict[str, Any]], every: float
) -> None:
    """Start the exports one after another, so that the outage meets each at another step."""
    for draft in drafts:
        await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
        await asyncio.sleep(every)


async def exports_across(
    outage: Outage,
    client: Client,
    queue: str,
    *,
    connection_id: uuid.UUID,
    drafts: list[dict[str, Any]],
    export_dir: Path,
) -> list[ExportResult]:
    starting = asyncio.create_task(start_staggered(client, queue, connection_id, drafts, every=0.2))
    try:
        await outage.inject(export_dir, within=60)
    finally:
        await starting
    return await results_of(client, [d["draft_order_id"] for d in drafts])


@dataclass
class AckedDropzone:
    """An export directory the test can see, answered by an ERP that acks everything."""

    connection_id: uuid.UUID
    export_dir: Path
    ack_dir: Path


def filesystem_dropzone(ledger: Ledger, org_id: uuid.UUID, base: Path) -> AckedDropzone:
    export_dir, ack_dir = base / "export", base / "ack"
    export_dir.mkdir(parents=True)
    ack_dir.mkdir()
    config = {
        "mode": "filesystem",
        "export_path": str(export_dir),
        "ack_path": str(ack_dir),
        "poll_interval_seconds": 1,
    }
    return AckedDropzone(add_connection(ledger, org_id, config), export_dir, ack_dir)


async def run_through_outage(
    client: Client, adapters: Adapters, outage: Outage, dropzone: AckedDropzone, drafts: list[dict[str, Any]]
) -> tuple[list[ExportResult], Any]:
    erp = AckResponder([(dropzone.export_dir, dropzone.ack_dir)])
    with PartialReadObserver([dropzone.export_dir]) as observer, erp:
        async with running_worker(client, adapters) as queue:
            results = await exports_across(
                outage,
                client,
                queue,
                connection_id=dropzone.connection_id,
                drafts=drafts,
                export_dir=dropzone.export_dir,
            )
    return results, observer.report


async def record_outage(
    name: str, client: Client, outage: Outage, drafts: list[dict[str, Any]], tally: Tally, report: Any
) -> None:
    assert outage.happened >= 1
    assert report.partial == [] and report.rewritten == []
    record(
        name,
        exports=len(drafts),
        faults={outage.kind: outage.happened},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
        exports_with_retried_steps=await retried(client, [d["draft_order_id"] for d in drafts]),
        down_seconds=outage.down_for,
    )


async def test_sftp_server_restarted_with_exports_in_flight_delivers_each_once(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, monkeypatch
):
    org_id = uuid.uuid4()
    config = openssh_server.config(
        operation_timeout_seconds=SFTP_OPERATION_TIMEOUT, connect_timeout_seconds=SFTP_CONNECT_TIMEOUT,
        poll_interval_seconds=1,
    )
    dropzone = AckedDropzone(
        add_connection(ledger, org_id, config),
        openssh_server.local_path(config["export_path"]),
        openssh_server.local_path(config["ack_path"]),
    )
    # ~250 KB each at ~2.5 MB/s: uploads overlap the restart.
    slow_down_source(monkeypatch, object_store, piece=32 * 1024, pause=0.0125)
    drafts = [make_draft(org_id=org_id, lines=1_000) for _ in range(size(full=30, reduced=6))]
    outage = Outage("sftp_restart", openssh_server.stop, openssh_server.start, down_for=1.0)
    try:
        results, report = await run_through_outage(
            client, adapters_for(ledger, object_store, sftp_pool), outage, dropzone, drafts
        )
    finally:
        openssh_server.start()  # never leave the session's server down
    assert [r.status for r in results] == ["ACKED"] * len(drafts)
    tally, _ = check_delivered_once(ledger, dropzone.export_dir, drafts, status="ACKED")
    await record_outage("sftp server restarted mid-run", client, outage, drafts, tally, report)


async def test_object_storage_restarted_with_exports_in_flight_delivers_each_once(
    client: Client, seaweedfs, ledger, object_store, sftp_pool, fast_heartbeats, tmp_path
):
    org_id = uuid.uuid4()
    dropzone = filesystem_dropzone(ledger, org_id, tmp_path / "dropzone")
    drafts = [make_draft(org_id=org_id, lines=20) for _ in range(size(full=30, reduced=8))]
    outage = Outage("s3_restart", seaweedfs.stop, seaweedfs.start, down_for=1.0)
    try:
        results, report = await run_through_outage(
            client, adapters_for(ledger, object_store, sftp_pool), outage, dropzone, drafts
        )
    finally:
        seaweedfs.start()
        await storage_answering(object_store)  # the next test must not meet its restart
    assert [r.status for r in results] == ["ACKED"] * len(drafts)
    tally, rows = check_delivered_once(ledger, dropzone.export_dir, drafts, status="ACKED")
    for row in rows:  # one object per attempt, holding the delivered bytes
        head = object_store.head(row.export_storage_key)
        assert head is not None and head.sha256 == row.sha256 and head.size == row.size_bytes
        body = b"".join(object_store.iter_chunks(row.export_storage_key))
        assert sha256_of(body) == row.sha256
    await record_outage("object storage restarted mid-run", client, outage, drafts, tally, report)


async def storage_answering(store: ObjectStore, within: float = 60) -> None:
    """SeaweedFS answers InternalError for a while after a restart: wait it out."""
    key = f"exports/health/{uuid.uuid4().hex}"
    body = b"ok"

    def round_trip() -> bool:
        store.put(key, body, sha256=sha256_of(body), size=len(body))
        return b"".join(store.iter_chunks(key)) == body

    await eventually(
        lambda: asyncio.to_thread(round_trip), timeout=within, every=0.5, ignoring=(DropzoneError,),
        what="object storage answering after its restart",
    )
    await asyncio.to_thread(store.delete, key)


async def test_database_restarted_with_exports_in_flight_delivers_each_once(
    client: Client, private_postgres, config_cipher: ConfigCipher, object_store, sftp_pool, fast_heartbeats, tmp_path
):
    """A PostgreSQL of the test's own (the session's server stays up for the others)."""
    ledger = Ledger.connect(private_postgres.url, config_cipher)
    try:
        org_id = uuid.uuid4()
        dropzone = filesystem_dropzone(ledger, org_id, tmp_path / "dropzone")
        drafts = [make_draft(org_id=org_id, lines=20) for _ in range(size(full=30, reduced=8))]
        outage = Outage("postgres_restart", private_postgres.stop, private_postgres.start, down_for=2.0)
        results, report = await run_through_outage(
            client, adapters_for(ledger, object_store, sftp_pool), outage, dropzone, drafts
        )
        assert [r.status for r in results] == ["ACKED"] * len(drafts)
        tally, rows = check_delivered_once(ledger, dropzone.export_dir, drafts, status="ACKED")
        assert all(row.acked_at is not None and row.erp_order_id for row in rows)
        await record_outage("database restarted mid-run", client, outage, drafts, tally, report)
    finally:
        ledger.dispose()
