"""The dropzone's disk is full (retried with backoff), or it refuses writes (fails at once, with its code).

See tests/server_faults/__init__.py for what every test here checks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from dropzone.ledger import Ledger
from starter.api import start_export
from tests.chaos.observer import PartialReadObserver
from tests.chaos.report import record
from tests.conftest import add_connection
from tests.helpers import make_draft
from tests.server_faults.support import (
    activity_attempts,
    adapters_for,
    check_delivered_once,
    failing_deliveries,
    only_row,
    results_of,
    running_worker,
    SFTP_CONNECT_TIMEOUT,
    SFTP_OPERATION_TIMEOUT,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.chaos]


# ---------------------------------------------------------------------------
# e, f) the dropzone's disk is full; the dropzone refuses writes
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(directory: Path, options: str) -> Iterator[Path]:
    """A real, small file system mounted on ``directory`` (tests run as root)."""
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=False, capture_output=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs ({mounted.stderr.decode().strip()}): run the tests as root, as CI does")
    try:
        yield directory
    finally:
        # Lazily if sshd still holds a file there: it lets go when it notices the client is gone.
        if subprocess.run(["umount", str(directory)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def fill_up(directory: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@dataclass
class Dropzone:
    connection_id: uuid.UUID
    export_dir: Path


def dropzone_of(  # type: ignore[no-untyped-def]
    kind: str, ledger: Ledger, org_id: uuid.UUID, openssh_server, tmp_path: Path
) -> Dropzone:
    """An export directory without ack path, on the filesystem or behind OpenSSH (as its non-root user)."""
    if kind == "filesystem":
        export_dir = tmp_path / "export"
        export_dir.mkdir()
        config: dict[str, Any] = {"mode": "filesystem", "export_path": str(export_dir)}
    else:
        config = openssh_server.config(
            operation_timeout_seconds=SFTP_OPERATION_TIMEOUT, connect_timeout_seconds=SFTP_CONNECT_TIMEOUT
        )
        config.pop("ack_path")
        export_dir = openssh_server.local_path(config["export_path"])
    return Dropzone(add_connection(ledger, org_id, config), export_dir)



@pytest.mark.parametrize("kind", ["filesystem", "openssh"])
async def test_full_dropzone_is_retried_with_backoff_and_delivered_once_space_is_back(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, tmp_path, kind
):
    org_id = uuid.uuid4()
    dropzone = dropzone_of(kind, ledger, org_id, openssh_server, tmp_path)
    draft = make_draft(org_id=org_id, lines=200)
    with tmpfs(dropzone.export_dir, "size=256k,mode=0777"), PartialReadObserver([dropzone.export_dir]) as observer:
        filler = fill_up(dropzone.export_dir)
        async with running_worker(client, adapters_for(ledger, object_store, sftp_pool)) as queue:
            await start_export(client, erp_connection_id=dropzone.connection_id, draft=draft, task_queue=queue)
            failures = await failing_deliveries(client, draft["draft_order_id"], attempts=4, within=30)
            while_full = only_row(ledger, draft["draft_order_id"])
            filler.unlink()
            (result,) = await results_of(client, [draft["draft_order_id"]])
        tally, _ = check_delivered_once(ledger, dropzone.export_dir, [draft], status="SENT")
    report = observer.report

    assert result.status == "SENT"
    assert while_full.status == "PENDING" and while_full.error_json is None
    codes = {f.last_failure.application_failure_info.type for f in failures}
    assert codes == {"DROPZONE_UNAVAILABLE"}, [f.last_failure for f in failures]
    # Backoff: the server's interval before each next attempt grows (0.5 s, 1 s, 2 s).
    intervals = [f.current_retry_interval.ToTimedelta() for f in failures]
    assert intervals == sorted(intervals) and intervals[-1] > intervals[0], intervals
    (deliver,) = await activity_attempts(client, draft["draft_order_id"], "deliver")
    assert deliver.attempt > len(failures)
    assert deliver.last_failure.application_failure_info.type == "DROPZONE_UNAVAILABLE"
    assert report.partial == [] and report.rewritten == []
    record(
        f"dropzone disk full ({kind})",
        exports=1,
        faults={"disk_full": 1},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
        deliver_attempts=deliver.attempt,
        retry_intervals_s=[round(i.total_seconds(), 2) for i in intervals],
        message=str(await client.data_converter.decode_failure(failures[0].last_failure)),
    )


@contextlib.contextmanager
def unwritable(kind: str, export_dir: Path) -> Iterator[None]:
    """The export directory refuses writes: read-only for the SFTP user (not root,
    who may write anywhere), or a read-only file system for the root worker."""
    if kind == "filesystem":
        with tmpfs(export_dir, "ro,size=64k"):
            yield
        return
    os.chown(export_dir, 0, 0)
    export_dir.chmod(0o555)
    yield


@pytest.mark.parametrize("kind", ["filesystem", "openssh"])
async def test_permission_denied_fails_at_once_with_a_clear_code(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, tmp_path, kind
):
    org_id = uuid.uuid4()
    dropzone = dropzone_of(kind, ledger, org_id, openssh_server, tmp_path)
    draft = make_draft(org_id=org_id)
    with unwritable(kind, dropzone.export_dir):
        async with running_worker(client, adapters_for(ledger, object_store, sftp_pool)) as queue:
            await start_export(client, erp_connection_id=dropzone.connection_id, draft=draft, task_queue=queue)
            (result,) = await results_of(client, [draft["draft_order_id"]])
        left_behind = os.listdir(dropzone.export_dir)

    # The run ends (after the shortened wait for an operator's retry) as FAILED.
    assert result.status == "FAILED" and result.error is not None
    assert result.error.code == "PERMISSION_DENIED"
    assert str(dropzone.export_dir) in result.error.message
    (deliver,) = await activity_attempts(client, draft["draft_order_id"], "deliver")
    assert deliver.attempt == 1, "a permanent error must not be retried"
    row = only_row(ledger, draft["draft_order_id"])
    assert row.status == "FAILED" and row.error_json["code"] == "PERMISSION_DENIED"
    assert left_behind == []
    record(
        f"dropzone permission denied ({kind})",
        exports=1,
        faults={"permission_denied": 1},
        lost=0 if row.status == "FAILED" else 1,  # failed visibly, with its code: not lost
        duplicated=len(left_behind),
        partial_reads=0,
        deliver_attempts=deliver.attempt,
    )
