"""`dropzone status`, `list` and `retry --all-failed` against real runs: tables, TSV, JSON."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from typing import Any

import pytest
from temporalio.client import Client

from starter.api import cancel_export, export_handle, export_status, start_export
from tests.conftest import add_connection
from tests.fixtures.operators import DROPZONE, REPO_ROOT, UI_URL
from tests.helpers import (
    ack_body,
    error_body,
    eventually,
    make_draft,
    wait_for_state,
    write_ack_atomically,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 90.0


async def export_and_wait_for_ack(client: Client, target, queue: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    draft = make_draft(org_id=target.org_id)
    await start_export(client, erp_connection_id=target.connection_id, draft=draft, task_queue=queue)
    state = await wait_for_state(client, draft["draft_order_id"], lambda s: s.waiting_for == "ack", timeout=WAIT)
    return draft["draft_order_id"], state.filename or ""


async def fail_by_error_ack(client: Client, target, draft_id: str, filename: str) -> None:  # type: ignore[no-untyped-def]
    write_ack_atomically(target.ack_dir, f"error_{filename}", error_body())
    await wait_for_state(client, draft_id, lambda s: s.status == "FAILED" and s.waiting_for == "retry_signal", timeout=WAIT)


async def run_id_of(client: Client, draft_id: str) -> str:
    return (await client.get_workflow_handle(f"erp-export-{draft_id}").describe()).run_id


async def wait_until_visible(client: Client, query: str, workflow_id: str) -> None:
    """Visibility (search attributes) follows the runs with a small delay."""
    async def matched() -> bool:
        return workflow_id in [w.id async for w in client.list_workflows(query)]

    await eventually(matched, timeout=WAIT, every=0.3, what=f"{workflow_id} matching {query}")


def tsv(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines()]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


def clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, (result.args, result.stdout)
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def in_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout/stderr on a pseudo-terminal, as an operator would."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*DROPZONE, *args], env={**env, "TERM": "xterm", "COLUMNS": env.get("COLUMNS", "250")}, cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        proc.wait(timeout=WAIT)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


async def test_status_and_list_show_every_attempt(
    dropzone_cli, dropzone_cli_in_process, dropzone_env, client: Client, run_worker, fs_target
):
    target = fs_target
    org = str(target.org_id)
    fast = dropzone_cli_in_process
    async with run_worker(client) as queue:
        env = {"DROPZONE_TASK_QUEUE": queue}
        first, first_file = await export_and_wait_for_ack(client, target, queue)
        await fail_by_error_ack(client, target, first, first_file)
        other, other_file = await export_and_wait_for_ack(client, target, queue)
        write_ack_atomically(target.ack_dir, f"ack_{other_file}", ack_body("SO-B"))
        ok(await fast("retry", first, "--reason", "customer fixed", env=env))
        second = await wait_for_state(client, first, lambda s: s.attempt == 2 and s.waiting_for == "ack", timeout=WAIT)
        write_ack_atomically(target.ack_dir, f"ack_{second.filename}", ack_body("SO-A"))
        for draft_id in (first, other):
            await wait_for_state(client, draft_id, lambda s: s.status == "ACKED", timeout=WAIT)
    run_id = await run_id_of(client, first)
    link = f"{UI_URL}/namespaces/default/workflows/erp-export-{first}/{run_id}/history"

    # Real processes, as an operator or a script runs them (in parallel: each costs seconds).
    status_plain, list_json, list_terminal = await asyncio.gather(
        dropzone_cli("status", first),
        dropzone_cli("list", "--org", org, "--json"),
        asyncio.to_thread(in_terminal, ["list", "--org", org], dropzone_env),
    )
    # Variants of the same commands, run in this process.
    status_json = await fast("status", first, "--json")
    list_plain = await fast("list", "--org", org, "--status", "ACKED")

    # status, piped: one header line and one tab-separated line per attempt.
    rows = tsv(ok(status_plain).stdout)
    assert rows[0] == ["attempt", "file", "status", "erp_order_id", "error", "created", "sent", "acked", "dropzone_path", "workflow"]
    assert [r[:4] for r in rows[1:]] == [["1", first_file, "FAILED", ""], ["2", second.filename, "ACKED", "SO-A"]]
    assert rows[1][4] == "INVALID_CUSTOMER: Customer 4711 not found in ERP"
    assert rows[1][6] and not rows[1][7] and rows[2][7]  # sent both times, acked only the second
    assert rows[1][8] == str(target.export_dir / first_file) and (target.export_dir / first_file).is_file()
    assert rows[1][9] == link and rows[2][9] == link

    status = json.loads(ok(status_json).stdout)
    attempts = status["attempts"]
    assert status["org_id"] == org
    assert [(a["attempt"], a["status"], a["erp_order_id"]) for a in attempts] == [(1, "FAILED", None), (2, "ACKED", "SO-A")]
    assert attempts[0]["error"]["code"] == "INVALID_CUSTOMER" and attempts[1]["error"] is None
    assert attempts[1]["workflow_url"] == link and attempts[1]["workflow_run_id"] == run_id
    assert attempts[1]["dropzone_path"] == str(target.export_dir / second.filename)

    rows = tsv(ok(list_plain).stdout)
    assert rows[0] == ["created", "org", "draft", "attempt", "status", "file", "erp_order_id", "error"]
    assert sorted((r[2], r[4], r[6]) for r in rows[1:]) == sorted([(first, "ACKED", "SO-A"), (other, "ACKED", "SO-B")])
    assert "page 1: rows 1-2" in list_plain.stderr
    assert f"{UI_URL}/namespaces/default/workflows?query=OrgId%3D%22{org}%22%20AND%20ExportStatus%3D%22ACKED%22" in list_plain.stderr

    listed = json.loads(ok(list_json).stdout)
    assert [(e["draft_order_id"], e["attempt"]) for e in listed["exports"]] == [(first, 2), (other, 1), (first, 1)]
    assert listed["has_more"] is False and listed["page"] == 1

    # On a terminal: a rich table (box drawing), the same facts, the page caption.
    assert "┃" in list_terminal and first in list_terminal and other in list_terminal
    assert "page 1: rows 1-3" in list_terminal and "Traceback" not in list_terminal

    # Filters and pages (the same command code, run in this process).
    failed = json.loads(ok(await fast("list", "--org", org, "--status", "failed", "--json")).stdout)
    assert [(e["draft_order_id"], e["status"]) for e in failed["exports"]] == [(first, "FAILED")]
    page1 = json.loads(ok(await fast("list", "--org", org, "--limit", "2", "--json")).stdout)
    page2 = json.loads(ok(await fast("list", "--org", org, "--limit", "2", "--page", "2", "--json")).stdout)
    assert [(e["draft_order_id"], e["attempt"]) for e in page1["exports"]] == [(first, 2), (other, 1)]
    assert page1["has_more"] is True
    assert [(e["draft_order_id"], e["attempt"]) for e in page2["exports"]] == [(first, 1)] and page2["has_more"] is False
    recent = json.loads(ok(await fast("list", "--org", org, "--since", "1h", "--json")).stdout)
    future = json.loads(ok(await fast("list", "--org", org, "--since", "2999-01-01", "--json")).stdout)
    assert len(recent["exports"]) == 3 and future["exports"] == []
    paged = await fast("list", "--org", org, "--limit", "1")
    assert len(tsv(ok(paged).stdout)) == 2 and "next page: --page 2" in paged.stderr


async def test_read_commands_refuse_bad_input_with_one_line(dropzone_cli, dropzone_cli_in_process):
    fast = dropzone_cli_in_process
    # One real process: exit code and stderr as a shell sees them.
    clean_error(await dropzone_cli("list", "--status", "DONE"), "--status 'DONE': expected one of PENDING, SENT, ACKED, FAILED")
    clean_error(await fast("list", "--since", "yesterday"), "--since 'yesterday'")
    clean_error(await fast("list", "--org", "acme"), "--org 'acme' is not a UUID")
    clean_error(await fast("list", "--page", "0"), "--page")
    clean_error(await fast("status", "nope"), "draft id 'nope' is not a UUID")
    missing = str(uuid.uuid4())
    clean_error(await fast("status", missing, "--json"), f"no export recorded for draft {missing}")
    clean_error(await fast("retry", "--all-failed"), "--all-failed needs --org")
    clean_error(await fast("retry", missing, "--all-failed", "--org", str(uuid.uuid4())), "not both")
    clean_error(await fast("retry"), "give a draft id, or --all-failed --org ORG")


async def test_retry_all_failed_signals_running_exports_and_reports_closed_ones(
    dropzone_cli, dropzone_cli_in_process, dropzone_env, client: Client, run_worker, fs_target, ledger, tmp_path
):
    fast = dropzone_cli_in_process
    target = fs_target
    org = str(target.org_id)
    other_dirs = {name: tmp_path / f"other-{name}" for name in ("export", "ack")}
    for path in other_dirs.values():
        path.mkdir()
    other_org = uuid.uuid4()
    other_target = type(target)(
        "filesystem", other_org,
        add_connection(ledger, other_org, {"mode": "filesystem", "export_path": str(other_dirs["export"]),
                                           "ack_path": str(other_dirs["ack"]), "poll_interval_seconds": 1}),
        other_dirs["export"], other_dirs["ack"], {},
    )
    async with run_worker(client) as queue:
        env = {"DROPZONE_TASK_QUEUE": queue}
        failed: dict[str, str] = {}
        for name in ("x", "y", "closed", "retried_already"):
            draft_id, filename = await export_and_wait_for_ack(client, target, queue)
            await fail_by_error_ack(client, target, draft_id, filename)
            failed[name] = draft_id
        other_failed, other_file = await export_and_wait_for_ack(client, other_target, queue)
        await fail_by_error_ack(client, other_target, other_failed, other_file)
        acked, acked_file = await export_and_wait_for_ack(client, target, queue)
        write_ack_atomically(target.ack_dir, f"ack_{acked_file}", ack_body())
        await wait_for_state(client, acked, lambda s: s.status == "ACKED", timeout=WAIT)
        # Closed: the operator gave up on it; the run ended FAILED.
        await cancel_export(client, failed["closed"], reason="given up")
        assert (await asyncio.wait_for(export_handle(client, failed["closed"]).result(), WAIT)).status == "FAILED"
        # Failed before an attempt row existed (another org's connection): only Temporal knows it.
        rowless = make_draft(org_id=target.org_id)
        failed["rowless"] = rowless["draft_order_id"]
        await start_export(client, erp_connection_id=other_target.connection_id, draft=rowless, task_queue=queue)
        await wait_for_state(client, failed["rowless"], lambda s: s.waiting_for == "retry_signal", timeout=WAIT)
        await wait_until_visible(client, f'OrgId="{org}" AND ExportStatus="FAILED"', f"erp-export-{failed['rowless']}")
        # Already retried: its newest attempt is waiting for the ERP, so it is not failed.
        ok(await fast("retry", failed["retried_already"], env=env))
        await wait_for_state(client, failed["retried_already"], lambda s: s.attempt == 2 and s.waiting_for == "ack", timeout=WAIT)

        dry_process, shown = await asyncio.gather(
            dropzone_cli("retry", "--all-failed", "--org", org, "--dry-run", "--json", env=env),
            asyncio.to_thread(in_terminal, ["retry", "--all-failed", "--org", org, "--dry-run"], {**dropzone_env, **env}),
        )
        dry = json.loads(ok(dry_process).stdout)
        assert sorted(r["draft_order_id"] for r in dry["would_retry"]) == sorted([failed["x"], failed["y"], failed["rowless"]])
        assert dry["skipped"] == [{"draft_order_id": failed["closed"], "workflow_id": f"erp-export-{failed['closed']}",
                                   "reason": "workflow is closed (COMPLETED)"}]
        assert dry["retried"] == [] and dry["errors"] == [] and dry["dry_run"] is True
        for name in ("x", "y"):  # a dry run signals nothing
            state = await export_status(client, failed[name])
            assert state.attempt == 1 and state.waiting_for == "retry_signal"

        assert "┃" in shown and "would retry 3 of 4 FAILED exports; skipped 1; errors 0" in shown

        done = ok(await fast("retry", "--all-failed", "--org", org, "--reason", "ERP fixed", env=env))
        rows = tsv(done.stdout)
        assert rows[0] == ["draft", "result", "detail", "workflow"]
        results: dict[str, Any] = {r[0]: r[1:] for r in rows[1:5]}
        assert [results[failed[name]][0] for name in ("x", "y", "rowless")] == ["retried"] * 3
        assert results[failed["closed"]][:2] == ["skipped", "workflow is closed (COMPLETED)"]
        assert results[failed["x"]][2].startswith(f"{UI_URL}/namespaces/default/workflows/erp-export-{failed['x']}")
        assert "retried 3 of 4 FAILED exports; skipped 1; errors 0" in done.stdout
        assert "dropzone export FILE --connection ID --force" in done.stdout
        for name in ("x", "y"):
            await wait_for_state(client, failed[name], lambda s: s.attempt == 2 and s.waiting_for == "ack", timeout=WAIT)

        again = json.loads(ok(await fast("retry", "--all-failed", "--org", org, "--json", env=env)).stdout)
        assert [r["draft_order_id"] for r in again["skipped"]] == [failed["closed"]]
        # Only the row-less one can be FAILED again already (its connection is still wrong).
        assert {r["draft_order_id"] for r in again["retried"]} <= {failed["rowless"]}

    def attempts(draft_id: str) -> list[tuple[int, str]]:
        return sorted((r.attempt, str(r.status)) for r in ledger.list_exports(draft_order_id=uuid.UUID(draft_id)))

    assert attempts(failed["x"]) == [(1, "FAILED"), (2, "SENT")]
    assert attempts(failed["closed"]) == [(1, "FAILED")]
    assert attempts(failed["retried_already"]) == [(1, "FAILED"), (2, "SENT")]
    assert attempts(other_failed) == [(1, "FAILED")]  # another org: untouched
    assert attempts(acked) == [(1, "ACKED")]
