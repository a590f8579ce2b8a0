"""The ERP simulator at seed scale: exports above its old 64 MiB limit, checked by streaming.

``dropzone erp-sim`` runs as a real process (its peak RSS read from the kernel
when it exits) on a filesystem connection; the SFTP read path is exercised
against OpenSSH. Export files are built from rendered chunks of real lines, so
a 70 MB file costs a fraction of a second to write.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks.measured import MiB, Measured, run_measured
from dropzone import naming
from dropzone.connection_config import parse_connection_config
from dropzone.export_v1 import export_head_and_tail, render_lines_chunk, validate_draft
from starter.erp_sim import ErpRules, ErpSimulator, open_erp_side
from tests.conftest import add_connection
from tests.helpers import make_draft

REPO = Path(__file__).resolve().parents[1]
OLD_LIMIT = 64 * 1024 * 1024
CHUNK_LINES = 1000


def write_export(directory: Path, *, chunks: int, bad_index: int | None = None) -> tuple[str, int]:
    """An orderflow_export_json_v1 file of ``chunks`` × 1,000 rendered lines (line numbers
    repeat: the format does not forbid it); ``bad_index`` gets qty 0. (name, size)."""
    draft = validate_draft(make_draft(org_id=uuid.uuid4(), lines=CHUNK_LINES))
    head, tail = export_head_and_tail(draft)
    body = render_lines_chunk(draft.lines, first=False)
    name = naming.export_filename(draft.draft_order_id, datetime.now(UTC), uuid.uuid4())
    with open(directory / name, "wb") as out:
        out.write(head + render_lines_chunk(draft.lines, first=True))
        for n in range(1, chunks):
            if bad_index is not None and n == bad_index // CHUNK_LINES:
                lines = list(draft.lines)
                lines[bad_index % CHUNK_LINES] = lines[bad_index % CHUNK_LINES].model_copy(update={"qty": 0})
                out.write(render_lines_chunk(lines, first=False))
            else:
                out.write(body)
        out.write(tail)
    return name, (directory / name).stat().st_size


def answer(ack_dir: Path, name: str) -> dict[str, str]:
    return json.loads((ack_dir / name).read_bytes())


async def erp_sim(*args: str, env: dict[str, str]) -> Measured:
    argv = [sys.executable, "-m", "starter.cli", "erp-sim", *args, "--once"]
    return await asyncio.to_thread(run_measured, argv, env, timeout=180, cwd=REPO)


@pytest.mark.asyncio(loop_scope="session")
async def test_erp_sim_answers_exports_above_the_old_limit_in_bounded_memory(  # type: ignore[no-untyped-def]
    dropzone_env, ledger, tmp_path
) -> None:
    dirs = {}
    for which in ("default", "limited"):
        export_dir, ack_dir = tmp_path / which / "exports", tmp_path / which / "acks"
        export_dir.mkdir(parents=True)
        ack_dir.mkdir()
        config = {"mode": "filesystem", "export_path": str(export_dir), "ack_path": str(ack_dir)}
        dirs[which] = (export_dir, ack_dir, add_connection(ledger, uuid.uuid4(), config))
    export_dir, ack_dir, connection_id = dirs["default"]
    good, size = write_export(export_dir, chunks=320)
    bad, _ = write_export(export_dir, chunks=320, bad_index=319_990)
    assert size > OLD_LIMIT + 4 * MiB
    os.link(export_dir / good, dirs["limited"][0] / good)

    # The limit is configurable and checked before reading: with the old one the same
    # file is refused unread, which makes this run the baseline of the next.
    limited = await erp_sim("--connection", str(dirs["limited"][2]), "--max-export-bytes", str(OLD_LIMIT),
                            env=dropzone_env)
    assert limited.returncode == 0, limited.stderr
    refused = answer(dirs["limited"][1], naming.error_ack_name(good))
    assert refused["error_code"] == "INVALID_FORMAT" and refused["message"] == f"larger than {OLD_LIMIT} bytes"

    answered = await erp_sim("--connection", str(connection_id), env=dropzone_env)
    assert answered.returncode == 0, answered.stderr
    assert "answered 2 export(s)" in answered.stdout
    acked = answer(ack_dir, naming.ack_name(good))
    assert acked["status"] == "ACKED" and acked["erp_order_id"].startswith("SO-")
    failed = answer(ack_dir, naming.error_ack_name(bad))
    assert failed["error_code"] == "INVALID_FORMAT"
    assert failed["message"] == (
        "not a valid orderflow_export_json_v1 document: lines[319990].qty: must be greater than 0"
    )
    growth = (answered.peak_rss - limited.peak_rss) / MiB
    # The file once in memory plus a span per line; json.loads of it alone took ~10× its size.
    assert growth <= 2 * size / MiB, f"erp-sim grew by {growth:.0f} MiB for a {size / MiB:.0f} MiB export"


def test_erp_side_reads_a_large_export_over_sftp_in_one_buffer(openssh_server) -> None:  # type: ignore[no-untyped-def]
    config = parse_connection_config(openssh_server.config())
    export_dir = openssh_server.local_path(config.export_path)
    ack_dir = openssh_server.local_path(config.ack_path)
    name, size = write_export(export_dir, chunks=20)
    with open_erp_side(config) as side:
        assert side.read_export_buffer(name, max_bytes=size) == (export_dir / name).read_bytes()
        assert side.read_export_buffer(name, max_bytes=size - 1) is None
    sim = ErpSimulator(lambda: open_erp_side(config), ErpRules())
    try:
        assert [a.status for a in sim.scan_once()] == ["ACKED"]
    finally:
        sim.close()
    assert answer(ack_dir, naming.ack_name(name))["status"] == "ACKED"
