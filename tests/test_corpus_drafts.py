"""Malformed drafts (tests/data/bad_drafts/) are refused before anything is written.

Each file's expected offending field paths are in ``index.json``. Every draft
must be rejected by ``validate_draft`` naming exactly those fields, and by
``dropzone export`` with one clear error naming each of them, exit code 2, no
traceback — and no ledger row, no stored object, no dropzone file. The huge
cases (10 MB of nesting, a 10 MB string, 100,000 lines with one bad one) are
generated here rather than committed.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from typer.testing import CliRunner

import starter.cli  # noqa: F401  (registers the commands)
from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import validate_draft
from starter.cli.common import app
from tests.helpers import make_draft

DATA = Path(__file__).parent / "data" / "bad_drafts"
INDEX: dict[str, dict] = json.loads((DATA / "index.json").read_text(encoding="utf-8"))
# Planted in bad values: an error message must name the field, never echo the input.
ECHO = "ECHOED-INPUT-7f3a"


GENERATED_NAMES = ("nesting_10mb", "nesting_10mb_in_a_field", "string_10mb", "100k_lines_one_bad")


@functools.cache
def _generated(name: str) -> tuple[bytes, list[str]]:
    """Built on first use, not at collection: each is 10 MB or more."""
    base = make_draft(org_id=uuid.uuid4())
    depth = 5 * 1024 * 1024  # "[" and "]" each: 10 MB of nesting
    if name == "nesting_10mb":
        return b'{"customer": ' + b"[" * depth + b"]" * depth + b"}", ["(document)"]
    if name == "nesting_10mb_in_a_field":
        body = json.dumps({**base, "header": "@"}).encode()
        return body.replace(b'"@"', b"[" * depth + b"]" * depth), ["(document)"]
    if name == "string_10mb":
        return json.dumps({**base, "org_slug": "s" * (10 * 1024 * 1024)}).encode(), ["org_slug"]
    assert name == "100k_lines_one_bad"
    lines = make_draft(org_id=uuid.uuid4(), lines=100_000)
    lines["lines"][77_777]["qty"] = -1
    return json.dumps(lines).encode(), ["lines[77777].qty"]


def _all_cases() -> list[str]:
    return sorted(INDEX) + list(GENERATED_NAMES)


def _case(name: str) -> tuple[bytes, list[str]]:
    if name in GENERATED_NAMES:
        return _generated(name)
    return (DATA / name).read_bytes(), INDEX[name]["fields"]


def test_the_corpus_is_big_enough():
    assert len(INDEX) >= 40
    assert {p.name for p in DATA.glob("*.json")} - {"index.json"} == set(INDEX)


@pytest.mark.parametrize("name", _all_cases())
def test_validate_draft_names_every_offending_field(name):
    body, fields = _case(name)
    with pytest.raises(InvalidDraftError) as caught:
        validate_draft(body)
    error = caught.value
    assert sorted(error.fields) == sorted(fields)
    for field in fields:
        assert f"{field}:" in error.message
    assert ECHO not in error.message
    assert len(error.message) < 10_000  # a 10 MB input never becomes a 10 MB message


@pytest.fixture(scope="module")
def s3(seaweedfs):  # type: ignore[no-untyped-def]
    client = boto3.session.Session(
        aws_access_key_id=seaweedfs.access_key, aws_secret_access_key=seaweedfs.secret_key, region_name="us-east-1"
    ).client(
        "s3",
        endpoint_url=seaweedfs.endpoint_url,
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
    )
    yield lambda: sorted(o["Key"] for o in client.list_objects_v2(Bucket=seaweedfs.bucket).get("Contents", []))
    client.close()


@pytest.fixture
def cli_env(dropzone_env: dict[str, str]) -> dict[str, str]:
    return dropzone_env


def test_dropzone_export_refuses_every_bad_draft_and_writes_nothing(cli_env, fs_target, ledger, s3, tmp_path):
    objects_before = s3()
    runner = CliRunner()
    for name in _all_cases():
        body, fields = _case(name)
        path = tmp_path / "draft.json"
        path.write_bytes(body)
        result = runner.invoke(app, ["export", str(path), "--connection", str(fs_target.connection_id)], env=cli_env)
        assert result.exit_code == 2, (name, result.stdout, result.stderr)
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.exception)
        assert result.stderr.startswith("error: invalid draft:"), (name, result.stderr[:500])
        assert result.stderr.count("\n") == 1, name  # one line
        for field in fields:
            assert f"{field}:" in result.stderr, (name, field, result.stderr[:500])
        assert ECHO not in result.stderr + result.stdout
    assert ledger.list_exports(org_id=fs_target.org_id) == []
    assert ledger.list_exports() == []
    assert s3() == objects_before
    assert list(fs_target.export_dir.iterdir()) == [] and list(fs_target.ack_dir.iterdir()) == []


def test_dropzone_export_as_a_process(cli_env, fs_target, ledger):
    """One real process per kind of failure: exit code 2 and no traceback."""
    for name in ("many_problems_at_once.json", "truncated_json.json", "not_utf8.json"):
        result = subprocess.run(
            [sys.executable, "-m", "starter.cli", "export", str(DATA / name), "--connection", str(fs_target.connection_id)],
            env={**cli_env, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr + result.stdout
        for field in INDEX[name]["fields"]:
            assert field in result.stderr
    assert ledger.list_exports() == []
