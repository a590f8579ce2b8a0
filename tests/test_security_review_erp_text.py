"""Security review, item 5: text the ERP writes reaches operators' terminals only as plain text.

An ERP's ``error_`` file whose code and message carry terminal escape
sequences (colour, clear screen, window title, a one-byte C1 CSI), a bidi
override, line breaks and rich markup (``[/]``, ``[bold]``) is taken by the
real ack poll on a real worker. Then, as an operator runs them (real processes,
piped and on a pseudo-terminal): ``dropzone export --wait`` prints the failed
state, ``dropzone status`` and ``dropzone list`` the ledger's rows — each exits
as it should, without a traceback, without one byte of the ERP's sequences,
and shows the words (brackets included) as text. The ledger keeps what the ERP
really wrote, escaped, in ``error_json.message_raw``.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from temporalio.client import Client

from activities.acks import AckActivities
from dropzone.acks import escape_controls, parse_ack, terminal_safe
from tests.helpers import make_draft, wait_for_state, write_ack_atomically
from tests.test_corpus_acks import open_export, poll, put_file
from tests.test_operators_cli import in_terminal, tsv

WAIT = 120.0
CODE = "ERP[/]42"
MESSAGE = (
    "Kunde 4711 \x1b[31mgesperrt\x1b[0m [/] [bold]bitte[/bold] pr\u00fcfen"
    "\x1b]0;pwned-title\x07\x1b[2J\x9b1;1H \u202eevil\u202c\nzweite Zeile\r\tEnde\x07\x00"
)
# What a terminal must never receive from the ERP (all of them are in MESSAGE);
# text output must not show the hidden title either (JSON has it escaped, in message_raw).
FORBIDDEN = ("\x1b", "\x9b", "\u202e", "\x07", "\r")
HIDDEN = "pwned-title"
SHOWN = "Kunde 4711 gesperrt [/] [bold]bitte[/bold] pr\u00fcfen evil zweite Zeile Ende\ufffd"


RICH_STYLING = re.compile(r"\x1b\[[0-9;]*m|\x1b\]8;[^\x1b\x07]*(?:\x1b\\|\x07)")


def error_file(code: str = CODE, message: str = MESSAGE) -> bytes:
    return json.dumps(
        {"status": "FAILED", "error_code": code, "message": message, "processed_at": "2025-12-27T10:10:00Z"}
    ).encode()


def assert_safe(output: str, where: str, *, text: bool = True) -> None:
    for bad in FORBIDDEN + ((HIDDEN,) if text else ()):
        assert bad not in output, f"{bad!r} reached the terminal in {where}: {output!r}"
    assert "Traceback" not in output, where


def test_control_characters_are_stripped_on_parse_and_kept_escaped():
    parsed = parse_ack(error_file(), kind="error", name="error_x.json")
    assert parsed.message == SHOWN == terminal_safe(MESSAGE)
    stored = parsed.to_error_json()
    assert stored["message"] == SHOWN
    assert stored["message_raw"] == escape_controls(MESSAGE)
    assert "\\x1b[31mgesperrt" in stored["message_raw"] and "\\u202e" in stored["message_raw"]
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in stored["message_raw"])
    # A clean message keeps no raw copy: error_json stays as it always was.
    assert "message_raw" not in parse_ack(error_file(message="Kunde gesperrt"), kind="error", name="e").to_error_json()


@pytest.mark.parametrize("bad", ["SO-\x9b2J", "SO-\u202e1", "SO-\x1b[2J", "SO-\x85"])
def test_an_order_id_with_control_characters_is_refused_not_edited(adapters, ledger, fs_target, bad):
    # An id is never edited: "SO-1\x9b23" stripped could name another order.
    record = open_export(ledger, fs_target)
    body = json.dumps({"status": "ACKED", "erp_order_id": bad, "processed_at": "2025-12-27T10:10:00Z"}).encode()
    put_file(fs_target.ack_dir, f"ack_{record.filename}", body)
    assert poll(AckActivities(adapters.ledger, adapters.connectors), record) == "ACK_PENDING"
    assert ledger.get_export(record.id).status == "SENT"
    (rejection,) = ledger.list_ack_rejections(connection_id=fs_target.connection_id)
    assert "erp_order_id: must be non-blank text without control characters" in rejection.reason
    assert (fs_target.ack_dir / "error" / f"ack_{record.filename}").read_bytes() == body


@pytest.mark.asyncio(loop_scope="session")
async def test_erp_text_prints_as_plain_text_in_export_status_and_list(
    dropzone_cli, dropzone_cli_in_process, dropzone_env, client: Client, run_worker, fs_target, ledger, tmp_path
):
    draft = make_draft(org_id=fs_target.org_id)
    did = draft["draft_order_id"]
    draft_file = tmp_path / "draft.json"
    draft_file.write_text(json.dumps(draft), encoding="utf-8")
    async with run_worker(client) as queue:
        env = {"DROPZONE_TASK_QUEUE": queue}
        # `export --wait` as an operator runs it; the ERP answers while it waits.
        exporting = asyncio.ensure_future(dropzone_cli(
            "export", str(draft_file), "--connection", str(fs_target.connection_id), "--wait",
            "--timeout", str(WAIT), env=env, timeout=WAIT + 30,
        ))
        waiting = await wait_for_state(client, did, lambda s: s.waiting_for == "ack", timeout=WAIT)
        write_ack_atomically(fs_target.ack_dir, f"error_{waiting.filename}", error_file())
        exported = await exporting
        state = await wait_for_state(client, did, lambda s: s.status == "FAILED", timeout=WAIT)

    assert state.last_error is not None and (state.last_error.code, state.last_error.message) == (CODE, SHOWN)
    row = ledger.get_export(waiting.export_id)
    assert row.error_json is not None and row.error_json["message"] == SHOWN
    assert row.error_json["message_raw"] == escape_controls(MESSAGE)

    # export --wait: the FAILED state, printed (exit 1 = the export failed), markup off.
    assert exported.returncode == 1, (exported.stdout, exported.stderr)
    assert_safe(exported.stdout + exported.stderr, "export --wait")
    assert f"error: {CODE}: {SHOWN}" in exported.stdout

    status_piped, status_terminal = await asyncio.gather(
        dropzone_cli("status", did),
        asyncio.to_thread(in_terminal, ["status", did], dropzone_env),  # asserts exit 0
    )
    list_piped = await dropzone_cli_in_process("list", "--org", str(fs_target.org_id))
    status_json = await dropzone_cli_in_process("status", did, "--json")

    for name, result in (("status", status_piped), ("list", list_piped), ("status --json", status_json)):
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert_safe(result.stdout + result.stderr, name, text=name != "status --json")
    # No byte of the ERP's sequences: rich's own styling (SGR, OSC 8 links) is the only escape there.
    # (The pseudo-terminal itself turns each "\n" into "\r\n".)
    assert_safe(RICH_STYLING.sub("", status_terminal).replace("\r\n", "\n"), "status on a terminal")
    assert "\x1b[2J" not in status_terminal and "\x1b]0;" not in status_terminal
    assert "gesperrt" in status_terminal and "[/]" in status_terminal

    (header, attempt), listed = tsv(status_piped.stdout), tsv(list_piped.stdout)
    assert attempt[header.index("error")] == f"{CODE}: {SHOWN}"
    assert [r[listed[0].index("error")] for r in listed[1:]] == [f"{CODE}: {SHOWN}"]
    (shown_json,) = json.loads(status_json.stdout)["attempts"]
    assert shown_json["error"]["message"] == SHOWN
    assert shown_json["error"]["message_raw"] == escape_controls(MESSAGE)
    assert uuid.UUID(shown_json["export_id"]) == waiting.export_id
