"""File names and object keys."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropzone.naming import (
    ERROR_DIR,
    PROCESSED_DIR,
    ack_name,
    error_ack_name,
    export_filename,
    is_safe_filename,
    parse_ack_name,
    storage_key,
    execution_token,
    superseded_tmp_attempt,
    tmp_name,
)

DRAFT = UUID("550e8400-e29b-41d4-a716-446655440000")
EXPORT = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
ORG = UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7")
NAME = "sales_order_550e8400_20251226_100000_7c9e6679.json"


def test_export_filename() -> None:
    created = datetime(2025, 12, 26, 10, 0, 0, tzinfo=timezone.utc)
    assert export_filename(DRAFT, created, EXPORT) == NAME


def test_export_filename_converts_to_utc() -> None:
    berlin_winter = timezone(timedelta(hours=1))
    created = datetime(2025, 12, 26, 11, 0, 0, 999999, tzinfo=berlin_winter)
    assert export_filename(DRAFT, created, EXPORT) == NAME
    # across midnight and a date boundary
    west = timezone(timedelta(hours=-8))
    assert export_filename(DRAFT, datetime(2025, 12, 31, 20, 30, 5, tzinfo=west), EXPORT) == (
        "sales_order_550e8400_20260101_043005_7c9e6679.json"
    )


def test_export_filename_accepts_uuid_strings() -> None:
    created = datetime(2025, 12, 26, 10, 0, 0, tzinfo=timezone.utc)
    assert export_filename(str(DRAFT).upper(), created, str(EXPORT)) == NAME


def test_export_filename_rejects_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        export_filename(DRAFT, datetime(2025, 12, 26, 10, 0, 0), EXPORT)


def test_export_filename_is_safe() -> None:
    created = datetime(2025, 12, 26, 10, 0, 0, tzinfo=timezone.utc)
    assert is_safe_filename(export_filename(DRAFT, created, EXPORT))


def test_storage_key() -> None:
    assert storage_key(ORG, NAME) == f"exports/7c9e6679-7425-40de-944b-e07fc1f90ae7/{NAME}"
    assert storage_key(str(ORG).upper(), NAME) == storage_key(ORG, NAME)


@pytest.mark.parametrize("bad", ["", "../x.json", "a/b.json", ".hidden", "a\\b", "x\x00.json", "ü.json", "a" * 256])
def test_storage_key_refuses_unsafe_names(bad: str) -> None:
    with pytest.raises(ValueError):
        storage_key(ORG, bad)


def test_tmp_name() -> None:
    assert tmp_name(NAME, "k3x9q") == f"{NAME}.k3x9q.tmp"


@pytest.mark.parametrize("token", ["", "ABC", "a-b", "a/b", "a.b", "x" * 33, "a\n"])
def test_tmp_name_validates_token(token: str) -> None:
    with pytest.raises(ValueError):
        tmp_name(NAME, token)


def test_tmp_name_validates_filename_and_length() -> None:
    with pytest.raises(ValueError):
        tmp_name("../" + NAME, "abc")
    with pytest.raises(ValueError):
        tmp_name("a" * 250, "abcdef")  # result would exceed 255 bytes


def test_ack_names() -> None:
    assert ack_name(NAME) == f"ack_{NAME}"
    assert error_ack_name(NAME) == f"error_{NAME}"
    assert parse_ack_name(ack_name(NAME)) == ("ack", NAME)
    assert parse_ack_name(error_ack_name(NAME)) == ("error", NAME)
    with pytest.raises(ValueError):
        ack_name("a/b")
    with pytest.raises(ValueError):
        error_ack_name("a" * 250)


def test_dirs() -> None:
    assert PROCESSED_DIR == "processed"
    assert ERROR_DIR == "error"


@pytest.mark.parametrize(
    "name",
    [
        NAME,  # the export file itself
        f"ack_{NAME}.tmp",
        f"error_{NAME}.tmp",
        "ack_",
        "error_",
        "ack_.json",
        "ack_..",
        "ack_a..b",
        f"ack_{NAME}/../../etc/passwd",
        f"ack_../{NAME}",
        f"ack_..\\{NAME}",
        f"ack_{NAME}\x00",
        f"ack_{NAME}\n",
        "ack_x\ty",
        f"ACK_{NAME}",
        f" ack_{NAME}",
        f"ack_ {NAME}",
        f"ack_{NAME}\u200b",
        f"ack_ü{NAME}",
        "ack_" + "a" * 252,
        ".ack_x",
        "",
    ],
)
def test_parse_ack_name_rejects(name: str) -> None:
    assert parse_ack_name(name) is None


def test_is_safe_filename() -> None:
    assert is_safe_filename(NAME)
    assert is_safe_filename("a")
    assert is_safe_filename("a" * 255)
    for bad in ["", ".", "..", ".x", "a..b", "a/b", "a\\b", "a b", "a\x00", "a\n", "ü", "a" * 256, "a:b"]:
        assert not is_safe_filename(bad), bad
    assert not is_safe_filename(None)  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.one_of(st.text(), st.text(alphabet="ack_error_.-/\\\x00\n sales.json.tmp", max_size=40)))
def test_parse_ack_name_property(name: str) -> None:
    result = parse_ack_name(name)
    if result is None:
        return
    kind, filename = result
    assert kind in ("ack", "error")
    assert is_safe_filename(filename)
    assert is_safe_filename(name)
    assert not name.endswith(".tmp")
    assert name == f"{kind}_{filename}"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", min_size=1, max_size=200))
def test_round_trip_for_safe_names(filename: str) -> None:
    if not is_safe_filename(filename) or filename.endswith(".tmp"):
        return
    assert parse_ack_name(ack_name(filename)) == ("ack", filename)
    assert parse_ack_name(error_ack_name(filename)) == ("error", filename)


def test_execution_token_names_its_attempt() -> None:
    token = execution_token(3, "0a1b2c")
    assert token == "r3x0a1b2c"
    assert superseded_tmp_attempt(tmp_name(NAME, token), NAME) == 3
    # Other files, other exports' tmps and tokens without an attempt are never claimed.
    assert superseded_tmp_attempt(NAME, NAME) is None
    assert superseded_tmp_attempt(tmp_name(NAME, "tok1"), NAME) is None
    assert superseded_tmp_attempt(tmp_name("sales_order_other.json", token), NAME) is None
    with pytest.raises(ValueError):
        execution_token(1, "UPPER")
