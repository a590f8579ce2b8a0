"""`dropzone demo --exit` as the README tells a user to run it (on free ports, in a temporary data directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from starter.devstack import free_ports
from tests.test_devstack import _no_leftovers, wait_without_survivors  # noqa: F401  (the fixture cleans up)

DROPZONE = [sys.executable, "-m", "starter.cli"]
REPO = Path(__file__).resolve().parents[1]


def test_demo_exports_a_batch_retries_the_rejected_order_and_exits(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    temporal, ui, s3 = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPZONE_")}
    env["DROPZONE_ENV_FILE"] = str(tmp_path / "absent.env")
    result = subprocess.run(
        [*DROPZONE, "demo", "--exit", "--count", "5", "--data-dir", str(data_dir),
         "--temporal-port", str(temporal), "--ui-port", str(ui), "--s3-port", str(s3)],
        env=env, cwd=REPO, check=False, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr

    # Piped, the results table is tab-separated: a header, then one line per draft.
    lines = result.stdout.splitlines()
    header = lines.index("draft\tfile\tstatus\tERP order id\tattempts\tseconds")
    rows = [dict(zip(lines[header].split("\t"), line.split("\t"), strict=True)) for line in lines[header + 1:header + 6]]
    assert [row["status"] for row in rows] == ["ACKED"] * 5
    assert sorted(row["attempts"] for row in rows) == ["1", "1", "1", "1", "2"]
    assert len({row["ERP order id"] for row in rows}) == 5
    assert all(float(row["seconds"]) > 0 for row in rows)
    assert "5/5 exports ACKED" in result.stdout and "(1 after a retry)" in result.stdout
    assert "rejected by the ERP (INVALID_CUSTOMER)" in result.stdout  # the progress told the story
    assert f"http://127.0.0.1:{ui}/namespaces/default/workflows" in result.stdout

    # What the ERP saw: six files (the rejected order twice), six answers, all processed by the worker.
    exports = sorted(p.name for p in (data_dir / "dropzone" / "exports").iterdir())
    assert len(exports) == 6 and {row["file"] for row in rows} <= set(exports)
    processed = data_dir / "dropzone" / "acks" / "processed"
    answers = {p.name: json.loads(p.read_bytes()) for p in processed.iterdir()}
    assert sorted(name.split("_", 1)[0] for name in answers) == ["ack"] * 5 + ["error"]
    rejected = next(body for name, body in answers.items() if name.startswith("error_"))
    assert rejected["status"] == "FAILED" and rejected["error_code"] == "INVALID_CUSTOMER"
    assert not [p for p in (data_dir / "dropzone" / "acks").iterdir() if p.is_file()]  # no leftovers, no temp files

    assert wait_without_survivors(data_dir) == []
