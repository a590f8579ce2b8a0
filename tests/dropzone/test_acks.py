"""Ack file bodies."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from dropzone.acks import MAX_ACK_BYTES, MAX_MESSAGE_CHARS, Ack, ErrorAck, parse_ack
from dropzone.errors import MalformedAckError
from dropzone.naming import is_safe_filename

NAME = "ack_sales_order_550e8400_20251226_100000_7c9e6679.json"
ERR_NAME = "error_sales_order_550e8400_20251226_100000_7c9e6679.json"
ACK = {"status": "ACKED", "erp_order_id": "SO-2025-000123", "processed_at": "2025-12-27T10:10:00Z"}
FAILED = {
    "status": "FAILED",
    "error_code": "INVALID_CUSTOMER",
    "message": "Customer 4711 not found in ERP",
    "processed_at": "2025-12-27T10:10:00Z",
}
PROCESSED = datetime(2025, 12, 27, 10, 10, tzinfo=timezone.utc)


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def malformed(raw: bytes, kind: str = "ack", name: str = NAME) -> str:
    with pytest.raises(MalformedAckError) as info:
        parse_ack(raw, kind=kind, name=name)  # type: ignore[arg-type]
    err = info.value
    assert err.code == "MALFORMED_ACK" and not err.retryable
    if is_safe_filename(name):
        assert err.message.startswith(f"malformed ack file {name}: ")
    return err.message


def test_spec_ack() -> None:
    ack = parse_ack(body(ACK), kind="ack", name=NAME)
    assert ack == Ack(status="ACKED", erp_order_id="SO-2025-000123", processed_at=PROCESSED)
    assert ack.to_json() == ACK


def test_spec_error_ack() -> None:
    err = parse_ack(body(FAILED), kind="error", name=ERR_NAME)
    assert isinstance(err, ErrorAck)
    assert err.error_code == "INVALID_CUSTOMER"
    assert err.to_error_json() == {
        "code": "INVALID_CUSTOMER",
        "message": "Customer 4711 not found in ERP",
        "processed_at": "2025-12-27T10:10:00Z",
    }
    assert err.to_json() == FAILED


def test_offset_normalised_to_utc() -> None:
    ack = parse_ack(body({**ACK, "processed_at": "2025-12-27T12:10:00+02:00"}), kind="ack", name=NAME)
    assert ack.processed_at == PROCESSED
    assert ack.to_json()["processed_at"] == "2025-12-27T10:10:00Z"


def test_bom_and_whitespace_tolerated() -> None:
    raw = b"\xef\xbb\xbf\r\n  " + body(ACK) + b"\r\n"
    assert parse_ack(raw, kind="ack", name=NAME).erp_order_id == "SO-2025-000123"


def test_extra_keys_ignored() -> None:
    ack = parse_ack(body({**ACK, "erp_version": 7, "warnings": []}), kind="ack", name=NAME)
    assert ack.to_json() == ACK


def test_numeric_erp_order_id_accepted_as_text() -> None:
    assert parse_ack(body({**ACK, "erp_order_id": 123456}), kind="ack", name=NAME).erp_order_id == "123456"


def test_utf8_message() -> None:
    err = parse_ack(body({**FAILED, "message": "Kunde „Müller“ unbekannt"}), kind="error", name=ERR_NAME)
    assert err.message == "Kunde „Müller“ unbekannt"  # type: ignore[union-attr]


def test_long_message_truncated_and_nul_replaced() -> None:
    err = parse_ack(body({**FAILED, "message": "a\x00b" + "x" * 10_000}), kind="error", name=ERR_NAME)
    assert isinstance(err, ErrorAck)
    assert len(err.message) == MAX_MESSAGE_CHARS
    assert err.message.startswith("a\ufffdb") and err.message.endswith("…")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"\xef\xbb\xbf", "empty"),
        (b'{"status": "ACKED", "erp_order_id": "SO-1"', "not valid JSON (EOF while parsing an object"),
        (b'{"status": "ACK', "not valid JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
        (b"\xff\xfe{\x00", "not UTF-8 text (byte offset 0)"),
        (b"\x00\x01\x02", "not valid JSON"),
        (b"[" * 10_000, "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b'"ACKED"', "not a JSON object"),
        (body({"erp_order_id": "SO-1"}), "missing status"),
        (body({**ACK, "status": "acked"}), 'status is not "ACKED" or "FAILED"'),
        (body({**ACK, "status": None}), "missing status"),
        (body({**ACK, "status": ["ACKED"]}), 'status is not "ACKED" or "FAILED"'),
        (body(FAILED), 'an ack_ file must say status "ACKED", this one says "FAILED"'),
        (body({k: v for k, v in ACK.items() if k != "erp_order_id"}), "erp_order_id: is required"),
        (body({**ACK, "erp_order_id": ""}), "erp_order_id: must not be empty"),
        (body({**ACK, "erp_order_id": "  "}), "erp_order_id: must be non-blank text without control characters"),
        (body({**ACK, "erp_order_id": "SO\x001"}), "erp_order_id: must be non-blank text without control characters"),
        (body({**ACK, "erp_order_id": "SO\n1"}), "erp_order_id: must be non-blank text without control characters"),
        (body({**ACK, "erp_order_id": None}), "erp_order_id: must be a string"),
        (body({**ACK, "erp_order_id": True}), "erp_order_id: must be a string"),
        (body({**ACK, "processed_at": "2025-12-27T10:10:00"}), "processed_at: must include a UTC offset"),
        (body({**ACK, "processed_at": 1766830200}), "processed_at: must be an RFC 3339 timestamp"),
        (body({**ACK, "processed_at": "soon"}), "processed_at: must be an RFC 3339 timestamp"),
        (body({"status": "ACKED"}), "erp_order_id: is required; processed_at: is required"),
        (b'{"status": "ACKED", "erp_order_id": "\\ud800", "processed_at": "2025-12-27T10:10:00Z"}', "not valid JSON"),
    ],
)
def test_malformed_ack(raw: bytes, expected: str) -> None:
    assert expected in malformed(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (body(ACK), 'an error_ file must say status "FAILED", this one says "ACKED"'),
        (body({k: v for k, v in FAILED.items() if k != "error_code"}), "error_code: is required"),
        (body({**FAILED, "message": None}), "message: must be a string"),
        (body({**FAILED, "processed_at": None}), "processed_at: must be an RFC 3339 timestamp"),
    ],
)
def test_malformed_error_ack(raw: bytes, expected: str) -> None:
    assert expected in malformed(raw, kind="error", name=ERR_NAME)


def test_size_cap() -> None:
    padded = json.dumps({**ACK, "pad": "x" * (MAX_ACK_BYTES - 200)}).encode()
    assert len(padded) <= MAX_ACK_BYTES
    assert parse_ack(padded, kind="ack", name=NAME).erp_order_id == "SO-2025-000123"
    too_big = json.dumps({**ACK, "pad": "x" * MAX_ACK_BYTES}).encode()
    assert "larger than 1048576 bytes" in malformed(too_big)
    # What a capped reader hands over: the first MAX_ACK_BYTES + 1 bytes.
    assert "larger than" in malformed(too_big[: MAX_ACK_BYTES + 1])


def test_message_never_quotes_the_body() -> None:
    secret = "ZEBRA-SECRET-991"
    for raw in (
        body({**ACK, "erp_order_id": secret + "\n"}),
        body({**ACK, "status": secret}),
        body({**ACK, "processed_at": secret}),
        (secret + "{").encode(),
        body([secret]),
    ):
        assert "ZEBRA" not in malformed(raw)


def test_hostile_name_is_not_printed_raw() -> None:
    message = malformed(b"", name="ack_\x1b[31mred\n")
    assert "\x1b" not in message and "\n" not in message


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_ack(body(ACK), kind="other", name=NAME)  # type: ignore[arg-type]


def test_memoryview_and_bytearray_accepted() -> None:
    assert parse_ack(bytearray(body(ACK)), kind="ack", name=NAME).erp_order_id == "SO-2025-000123"  # type: ignore[arg-type]
