"""Large drafts at the doors in front of the worker: ``dropzone export FILE`` and ``start_export``.

Real processes and servers: the CLI runs as a user runs it (its peak RSS read
from the kernel when it exits), the worker and the ERP simulator answer, the
drafts land in SeaweedFS. Bad large input fails before anything is written:
no object, no ledger row, no workflow, no temporary file.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest
from temporalio.service import RPCError, RPCStatusCode

from benchmarks.measured import MiB, Measured, run_measured, write_draft
from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import stream_validated_export
from starter.api import start_export
from starter.erp_sim import FilesystemErpSimulator
from tests.helpers import make_draft, sha256_of, wait_for_state
from tests.test_large_draft import inline_outcome, streamed_outcome
from workflows.policies import workflow_id_for

REPO = Path(__file__).resolve().parents[1]
DROPZONE = [sys.executable, "-m", "starter.cli"]
# ~11 MB: 40× the inline limit, a second for the worker. Validating it whole
# (the CLI before) grew the CLI by ~20× its size, ~220 MiB.
CLI_LINES = 60_000
CLI_GROWTH_LIMIT_MIB = 80
# ~100 MB with its one bad line near the end; the bound for a seed-scale draft.
BAD_LINES = 560_000
BAD_GROWTH_LIMIT_MIB = 300


async def cli(*args: str, env: dict[str, str], timeout: float = 120) -> Measured:
    return await asyncio.to_thread(run_measured, [*DROPZONE, *args], env, timeout=timeout, cwd=REPO)


def assert_clean_failure(result: Measured, *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def rendered_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    stream_validated_export(path.read_bytes(), digest.update)
    return digest.hexdigest()


def draft_objects(seaweedfs, org_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    s3 = boto3.client(
        "s3", endpoint_url=seaweedfs.endpoint_url, aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key, region_name=seaweedfs.region,
    )
    listed = s3.list_objects_v2(Bucket=seaweedfs.bucket, Prefix=f"drafts/{org_id}/")
    return [item["Key"] for item in listed.get("Contents", [])]


async def assert_no_workflow(client, draft_order_id: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RPCError) as info:
        await client.get_workflow_handle(workflow_id_for(draft_order_id)).describe()
    assert info.value.status == RPCStatusCode.NOT_FOUND


def spooled_leftovers() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("dropzone-draft-")}


@pytest.mark.asyncio(loop_scope="session")
async def test_cli_exports_a_large_draft_by_reference_in_bounded_memory(  # type: ignore[no-untyped-def]
    dropzone_env, client, run_worker, fs_target, ledger, object_store, seaweedfs, tmp_path
) -> None:
    small = write_draft(tmp_path / "small.json", org_id=fs_target.org_id, lines=3)
    large = write_draft(tmp_path / "large.json", org_id=fs_target.org_id, lines=CLI_LINES)
    assert large.size > 40 * 256 * 1024
    simulator = FilesystemErpSimulator(fs_target.export_dir, fs_target.ack_dir).start()
    try:
        async with run_worker(client) as queue:
            env = {**dropzone_env, "DROPZONE_TASK_QUEUE": queue}
            args = ("--connection", str(fs_target.connection_id), "--wait", "--timeout", "120")
            # The baseline takes the same path (by reference: the inline limit lowered for it),
            # so imports, boto3's first request and the Temporal client are not the draft's.
            baseline = await cli("export", str(small.path), *args,
                                 env={**env, "DROPZONE_INLINE_DRAFT_LIMIT_BYTES": "1024"})
            assert baseline.returncode == 0 and "status: ACKED" in baseline.stdout, baseline.stderr
            exported = await cli("export", str(large.path), *args, env=env)
            assert exported.returncode == 0, exported.stderr
            assert "status: ACKED" in exported.stdout, exported.stdout
    finally:
        simulator.stop()
    assert simulator.error is None
    growth = (exported.peak_rss - baseline.peak_rss) / MiB
    assert growth <= CLI_GROWTH_LIMIT_MIB, f"CLI grew by {growth:.0f} MiB for a {large.size / MiB:.0f} MiB draft"

    record = ledger.latest_export(uuid.UUID(large.draft_order_id))
    assert record is not None and record.status.value == "ACKED"
    assert record.sha256 == rendered_sha256(large.path)  # the very bytes the worker would render inline
    assert sha256_of(fs_target.export_dir / record.filename) == record.sha256
    # The draft went by reference, stored once, byte for byte.
    keys = draft_objects(seaweedfs, large.org_id)
    large_keys = [k for k in keys if f"/{large.draft_order_id}/" in k]
    assert len(large_keys) == 1
    stored = object_store.get_buffer(large_keys[0], max_bytes=large.size)
    assert stored == large.path.read_bytes()


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_large_drafts_fail_at_the_doors_naming_the_place_with_nothing_written(  # type: ignore[no-untyped-def]
    dropzone_env, client, fs_target, ledger, object_store, seaweedfs, tmp_path
) -> None:
    args = ("--connection", str(fs_target.connection_id))
    tiny = write_draft(tmp_path / "tiny.json", org_id=fs_target.org_id, lines=3, bad_index=1)
    baseline = await cli("export", str(tiny.path), *args, env=dropzone_env)
    assert_clean_failure(baseline, "lines[1].qty: must be greater than 0")

    bad = write_draft(tmp_path / "bad.json", org_id=fs_target.org_id, lines=BAD_LINES, bad_index=BAD_LINES - 7)
    assert bad.size >= 100 * 1000 * 1000
    result = await cli("export", str(bad.path), *args, env=dropzone_env)
    assert_clean_failure(result, f"lines[{BAD_LINES - 7}].qty: must be greater than 0")
    growth = (result.peak_rss - baseline.peak_rss) / MiB
    assert growth <= BAD_GROWTH_LIMIT_MIB, f"CLI grew by {growth:.0f} MiB on a {bad.size / MiB:.0f} MiB draft"

    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(2 * 1024**3)  # sparse: 2 GB that costs no disk
    too_large = await cli("export", str(huge), *args, env=dropzone_env)
    assert_clean_failure(too_large, "is 2,147,483,648 bytes, more than the limit of 536,870,912 bytes")
    assert too_large.peak_rss < baseline.peak_rss + 16 * MiB  # refused by its size, unread

    os.truncate(bad.path, bad.size - 100)  # cut off inside the last lines; the Python API door
    with pytest.raises(InvalidDraftError) as info:
        await start_export(client, erp_connection_id=fs_target.connection_id, draft=bad.path, store=object_store)
    assert info.value.message == (
        "invalid draft: (document): invalid JSON: Input data was truncated "
        f"at line 1 column {bad.size - 99} (byte {bad.size - 100})"
    )

    assert ledger.list_exports(draft_order_id=uuid.UUID(bad.draft_order_id)) == []
    assert draft_objects(seaweedfs, bad.org_id) == []
    await assert_no_workflow(client, bad.draft_order_id)


@pytest.mark.asyncio(loop_scope="session")
async def test_start_export_takes_a_path_a_file_and_a_stream(  # type: ignore[no-untyped-def]
    client, run_worker, fs_target, ledger, object_store, tmp_path
) -> None:
    inline_limit = 64 * 1024
    drafts = [write_draft(tmp_path / f"d{i}.json", org_id=fs_target.org_id, lines=2_000) for i in range(3)]
    assert all(d.size > inline_limit for d in drafts)
    simulator = FilesystemErpSimulator(fs_target.export_dir, fs_target.ack_dir).start()
    try:
        async with run_worker(client) as queue:
            with open(drafts[1].path, "rb") as handle:
                sources: list[object] = [drafts[0].path, handle, io.BytesIO(drafts[2].path.read_bytes())]
                for source in sources:
                    await start_export(
                        client, erp_connection_id=fs_target.connection_id, draft=source, store=object_store,
                        task_queue=queue, inline_limit_bytes=inline_limit,
                    )
            for draft in drafts:
                state = await wait_for_state(client, draft.draft_order_id, lambda s: s.status == "ACKED", timeout=60)
                assert ledger.get_export(state.export_id).sha256 == rendered_sha256(draft.path)
    finally:
        simulator.stop()
    assert spooled_leftovers() == set()


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_large_streams_fail_before_anything_is_written(  # type: ignore[no-untyped-def]
    client, fs_target, ledger, object_store, seaweedfs, tmp_path
) -> None:
    class Endless(io.RawIOBase):
        """2 GB of a draft's first bytes, generated as read: the limit must stop it early."""

        served = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            n = min(len(buffer), 2 * 1024**3 - self.served)
            buffer[:n] = b" " * n
            self.served += n
            return n

    before = spooled_leftovers()
    endless = Endless()
    with pytest.raises(InvalidDraftError, match="is more than the limit of 8,388,608 bytes"):
        await start_export(
            client, erp_connection_id=fs_target.connection_id, draft=io.BufferedReader(endless),
            store=object_store, max_draft_bytes=8 * MiB,
        )
    assert endless.served <= 8 * MiB + 2 * MiB  # stopped within a read or two of the limit

    bad = write_draft(tmp_path / "bad.json", org_id=fs_target.org_id, lines=20_000, bad_index=19_990)
    for source in (io.BytesIO(bad.path.read_bytes()), bad.path.read_bytes(), bad.path):
        with pytest.raises(InvalidDraftError) as info:
            await start_export(client, erp_connection_id=fs_target.connection_id, draft=source, store=object_store)
        assert info.value.message == "invalid draft: lines[19990].qty: must be greater than 0"
        assert info.value.fields == ["lines[19990].qty"]
    assert spooled_leftovers() == before
    assert ledger.list_exports(draft_order_id=uuid.UUID(bad.draft_order_id)) == []
    assert draft_objects(seaweedfs, bad.org_id) == []
    await assert_no_workflow(client, bad.draft_order_id)


@pytest.mark.parametrize("batch_lines", [1, 3, 100])
@pytest.mark.parametrize("case", ["falling", "duplicate late", "non-object then duplicate", "rising with a gap"])
def test_line_numbers_are_checked_alike_on_every_path(case: str, batch_lines: int) -> None:
    # The batched path keeps rising numbers in an array and builds its index of first uses
    # only when they stop rising: every way of leaving that fast path names what validate_draft names.
    draft = make_draft(org_id=uuid.uuid4(), lines=30)
    lines = draft["lines"]
    if case == "falling":
        lines.reverse()
        lines[29]["line_no"] = 30
    elif case == "duplicate late":
        lines[25]["line_no"] = 3
    elif case == "non-object then duplicate":
        lines[2] = 5
        lines[20]["line_no"] = 5
    else:
        lines[10]["line_no"] = 100
        lines[28]["line_no"] = 100
    raw = json.dumps(draft).encode()
    assert streamed_outcome(raw, batch_lines) == inline_outcome(raw)
    assert inline_outcome(raw)[0] == "invalid"
