"""Draft validation and orderflow_export_json_v1 rendering."""

from __future__ import annotations

import copy
import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import (
    EXPORT_FORMAT_VERSION,
    MAX_MESSAGE_PROBLEMS,
    DraftOrder,
    iter_render_export,
    render_export,
    validate_draft,
)

# The example draft and its export file, byte for byte: the format's reference.
GOLDEN = Path(__file__).resolve().parent / "golden"

TOP_KEYS = [
    "export_version",
    "org_slug",
    "draft_order_id",
    "approved_at",
    "customer",
    "header",
    "lines",
    "meta",
]
CUSTOMER_KEYS = ["id", "erp_customer_number", "name"]
HEADER_KEYS = ["external_order_number", "order_date", "currency", "requested_delivery_date", "notes"]
LINE_KEYS = [
    "line_no",
    "internal_sku",
    "qty",
    "uom",
    "unit_price",
    "currency",
    "customer_sku_raw",
    "description",
]
META_KEYS = ["created_by", "source_document"]
SOURCE_KEYS = ["document_id", "file_name", "sha256"]


def example() -> dict[str, Any]:
    return json.loads((GOLDEN / "draft_order.json").read_bytes())


def with_lines(n: int) -> dict[str, Any]:
    data = example()
    templates = data["lines"]
    data["lines"] = [dict(templates[i % 2], line_no=i + 1) for i in range(n)]
    return data


def problems_of(data: Any) -> InvalidDraftError:
    with pytest.raises(InvalidDraftError) as info:
        validate_draft(data)
    return info.value


def ordered_pairs(raw: bytes) -> Any:
    return json.loads(raw, object_pairs_hook=lambda pairs: pairs)


# ---------------------------------------------------------------- golden


def test_golden_file() -> None:
    draft = validate_draft((GOLDEN / "draft_order.json").read_bytes())
    assert render_export(draft) == (GOLDEN / "draft_order.export_v1.json").read_bytes()


def test_golden_layout_details() -> None:
    out = (GOLDEN / "draft_order.export_v1.json").read_bytes()
    text = out.decode("utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.startswith('{\n  "export_version": "orderflow_export_json_v1",\n')
    assert '"approved_at": "2025-12-26T10:00:00Z"' in text
    assert '"unit_price": null' in text
    assert '"qty": 10.0' in text and '"qty": 2,' in text  # int stays int, decimal stays decimal
    assert '"created_by": "ops@acme.de"' in text
    # Same layout as the stdlib's indent=2 pretty printer.
    assert json.dumps(json.loads(out), indent=2, ensure_ascii=False).encode() + b"\n" == out


# ---------------------------------------------------------------- output shape


def test_key_order_is_exactly_the_spec() -> None:
    doc = ordered_pairs(render_export(validate_draft(example())))
    assert [k for k, _ in doc] == TOP_KEYS
    top = dict(doc)
    assert top["export_version"] == EXPORT_FORMAT_VERSION == "orderflow_export_json_v1"
    assert [k for k, _ in top["customer"]] == CUSTOMER_KEYS
    assert [k for k, _ in top["header"]] == HEADER_KEYS
    for line in top["lines"]:
        assert [k for k, _ in line] == LINE_KEYS
    assert [k for k, _ in top["meta"]] == META_KEYS
    assert [k for k, _ in dict(top["meta"])["source_document"]] == SOURCE_KEYS


def test_optional_values_render_as_null_and_extras_never_leak() -> None:
    data = example()
    data["source_document"] = None
    data["header"]["requested_delivery_date"] = None
    data["header"]["notes"] = None
    del data["header"]["external_order_number"]
    data["lines"][0]["description"] = None
    data["future_field"] = {"secret": 1}
    data["lines"][0]["margin"] = 0.3
    doc = json.loads(render_export(validate_draft(data)))
    assert doc["meta"] == {"created_by": "ops@acme.de", "source_document": None}
    assert doc["header"]["requested_delivery_date"] is None
    assert doc["header"]["notes"] is None
    assert doc["header"]["external_order_number"] is None
    assert list(doc) == TOP_KEYS
    assert list(doc["lines"][0]) == LINE_KEYS


def test_timestamps_normalised_to_utc_z() -> None:
    data = example()
    data["approved_at"] = "2025-12-26T12:30:15+02:30"
    draft = validate_draft(data)
    assert draft.approved_at == datetime(2025, 12, 26, 10, 0, 15, tzinfo=timezone.utc)
    assert draft.approved_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert b'"approved_at": "2025-12-26T10:00:15Z"' in render_export(draft)


def test_utf8_without_escapes() -> None:
    data = example()
    data["customer"]["name"] = "Müller & Söhne GmbH"
    data["lines"][0]["description"] = 'Kabel "grün"\nzweite Zeile ✓'
    out = render_export(validate_draft(data))
    assert "Müller & Söhne GmbH".encode() in out
    assert b"\\u00fc" not in out
    assert json.loads(out)["lines"][0]["description"] == 'Kabel "grün"\nzweite Zeile ✓'


def test_same_draft_same_bytes() -> None:
    raw = json.dumps(with_lines(50)).encode()
    first = render_export(validate_draft(raw))
    for _ in range(3):
        assert render_export(validate_draft(raw)) == first
    # The same content via dict, str and reordered keys renders identically.
    reordered = dict(reversed(list(json.loads(raw).items())))
    assert render_export(validate_draft(reordered)) == first
    assert render_export(validate_draft(raw.decode())) == first


def test_validated_model_types() -> None:
    draft = validate_draft(example())
    assert isinstance(draft, DraftOrder)
    assert draft.draft_order_id == UUID("550e8400-e29b-41d4-a716-446655440000")
    assert draft.header.order_date == date(2025, 12, 1)
    assert draft.lines[1].unit_price is None
    assert draft.lines[1].qty == 2 and isinstance(draft.lines[1].qty, int)
    assert draft.source_document is not None
    assert draft.source_document.sha256.islower()


def test_uppercase_sha256_is_normalised() -> None:
    data = example()
    data["source_document"]["sha256"] = data["source_document"]["sha256"].upper()
    assert json.loads(render_export(validate_draft(data)))["meta"]["source_document"]["sha256"] == (
        example()["source_document"]["sha256"]
    )


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("n_lines", [1, 2, 3, 7, 1000, 1001, 2500])
@pytest.mark.parametrize("chunk", [1, 2, 3, 1000])
def test_streaming_equals_whole(n_lines: int, chunk: int) -> None:
    draft = validate_draft(with_lines(n_lines))
    chunks = list(iter_render_export(draft, chunk_lines=chunk))
    assert b"".join(chunks) == render_export(draft)
    # head + one piece per chunk of lines + tail
    assert len(chunks) == 2 + -(-n_lines // chunk)


def test_streaming_default_chunk_size() -> None:
    draft = validate_draft(with_lines(2345))
    assert b"".join(iter_render_export(draft)) == render_export(draft)


def test_streaming_rejects_bad_chunk_size() -> None:
    with pytest.raises(ValueError):
        list(iter_render_export(validate_draft(example()), chunk_lines=0))


_text = st.text(
    st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20
).filter(lambda s: s.strip() != "")
_number = st.one_of(
    st.integers(min_value=1, max_value=10**12),
    st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False),
)


@st.composite
def drafts(draw: st.DrawFn) -> dict[str, Any]:
    data = example()
    n = draw(st.integers(min_value=1, max_value=12))
    data["customer"]["name"] = draw(_text)
    data["header"]["notes"] = draw(st.none() | st.text(max_size=50))
    data["source_document"] = draw(st.sampled_from([None, data["source_document"]]))
    data["lines"] = [
        {
            "line_no": i + 1,
            "internal_sku": draw(_text),
            "qty": draw(_number),
            "uom": draw(_text),
            "unit_price": draw(st.none() | _number),
            "currency": draw(st.sampled_from(["EUR", "CHF", "USD"])),
            "customer_sku_raw": draw(st.none() | st.text(max_size=20)),
            "description": draw(st.none() | st.text(max_size=60)),
        }
        for i in range(n)
    ]
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=drafts(), chunk=st.integers(min_value=1, max_value=5))
def test_streaming_equals_whole_property(data: dict[str, Any], chunk: int) -> None:
    draft = validate_draft(data)
    whole = render_export(draft)
    assert b"".join(iter_render_export(draft, chunk_lines=chunk)) == whole
    parsed = json.loads(whole)
    assert [line["qty"] for line in parsed["lines"]] == [line["qty"] for line in data["lines"]]
    assert [line["description"] for line in parsed["lines"]] == [
        line["description"] for line in data["lines"]
    ]
    assert parsed["customer"]["name"] == data["customer"]["name"]


# ---------------------------------------------------------------- validation


def test_every_offending_field_is_named() -> None:
    data = example()
    data["draft_order_id"] = "not-a-uuid"
    data["approved_at"] = "2025-12-26T10:00:00"  # naive
    data["approved_by"] = "nobody"
    data["customer"]["erp_customer_number"] = ""
    data["header"]["currency"] = "XYZ"
    data["header"]["order_date"] = "01.12.2025"
    data["lines"][0]["qty"] = -1
    data["lines"][1]["unit_price"] = -0.5
    data["lines"][1]["uom"] = "   "
    data["source_document"]["sha256"] = "abc"
    err = problems_of(data)
    assert err.fields == [
        "draft_order_id",
        "approved_at",
        "approved_by",
        "customer.erp_customer_number",
        "header.order_date",
        "header.currency",
        "lines[0].qty",
        "lines[1].uom",
        "lines[1].unit_price",
        "source_document.sha256",
    ]
    assert err.code == "INVALID_DRAFT" and err.retryable is False
    assert err.message.startswith("invalid draft: ")
    assert "lines[0].qty: must be greater than 0" in err.message
    assert "lines[1].unit_price: must be greater than or equal to 0" in err.message
    assert "header.currency: unknown currency code" in err.message
    assert "approved_at: must include a UTC offset" in err.message
    assert "lines[1].uom: must not be blank" in err.message
    assert "customer.erp_customer_number: must not be empty" in err.message
    assert err.to_json()["fields"] == err.fields


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [
        (lambda d: d.pop("org_id"), "org_id", "is required"),
        (lambda d: d["lines"].clear(), "lines", "must contain at least 1 item(s)"),
        (lambda d: d.update(lines={}), "lines", "must be a JSON array"),
        (lambda d: d.update(customer="x"), "customer", "must be a JSON object"),
        (lambda d: d["lines"][0].update(qty="10"), "lines[0].qty", "must be a number"),
        (lambda d: d["lines"][0].update(qty=True), "lines[0].qty", "must be a number"),
        (lambda d: d["lines"][0].update(qty=0), "lines[0].qty", "must be greater than 0"),
        (lambda d: d["lines"][0].update(qty=float("inf")), "lines[0].qty", "must be a finite number"),
        (lambda d: d["lines"][0].update(unit_price=float("nan")), "lines[0].unit_price", "must be a finite number"),
        (lambda d: d["lines"][0].update(line_no=0), "lines[0].line_no", "must be greater than 0"),
        (lambda d: d["lines"][0].update(line_no=1.0), "lines[0].line_no", "must be an integer"),
        (lambda d: d["lines"][0].update(currency="eur"), "lines[0].currency", "must be 3 upper-case letters (ISO 4217)"),
        (lambda d: d["lines"][0].update(currency="XTS"), "lines[0].currency", "unknown currency code"),
        (lambda d: d["lines"][0].update(internal_sku="x" * 256), "lines[0].internal_sku", "must be at most 255 characters"),
        (lambda d: d["header"].update(notes="x" * 4001), "header.notes", "must be at most 4000 characters"),
        (lambda d: d.update(approved_at=1766743200), "approved_at", "must be an RFC 3339 timestamp string"),
        (lambda d: d.update(approved_at="yesterday"), "approved_at", "must be an RFC 3339 timestamp"),
        (lambda d: d["header"].update(order_date="2025-02-30"), "header.order_date", "must be a date (YYYY-MM-DD)"),
        (lambda d: d["header"].update(order_date="2025-12-01T00:00:00Z"), "header.order_date", "must be a date (YYYY-MM-DD)"),
        (lambda d: d["header"].update(order_date=20251201), "header.order_date", "must be a date (YYYY-MM-DD)"),
        (lambda d: d["customer"].update(id=12), "customer.id", "must be a UUID"),
        (lambda d: d["customer"].update(erp_customer_number=4711), "customer.erp_customer_number", "must be a string"),
        (lambda d: d.update(approved_by="ops@acme"), "approved_by", "must be an e-mail address"),
        (lambda d: d["source_document"].update(sha256="g" * 64), "source_document.sha256", "must be 64 hexadecimal characters (sha256)"),
    ],
)
def test_single_problem(mutate: Any, path: str, reason: str) -> None:
    data = example()
    mutate(data)
    err = problems_of(data)
    assert err.fields == [path]
    assert err.message == f"invalid draft: {path}: {reason}"


def test_duplicate_line_numbers_named() -> None:
    data = with_lines(4)
    data["lines"][2]["line_no"] = 1
    data["lines"][3]["line_no"] = 1
    err = problems_of(data)
    assert err.fields == ["lines[2].line_no", "lines[3].line_no"]
    assert "lines[2].line_no: duplicate line_no (already used by lines[0])" in err.message


def test_duplicates_reported_together_with_other_line_problems() -> None:
    for as_bytes in (False, True):
        data = with_lines(3)
        data["lines"][1]["line_no"] = 1
        data["lines"][2]["qty"] = 0
        err = problems_of(json.dumps(data).encode() if as_bytes else data)
        assert set(err.fields) == {"lines[1].line_no", "lines[2].qty"}


def test_line_numbers_need_not_be_contiguous() -> None:
    data = with_lines(3)
    for line, number in zip(data["lines"], (10, 3, 7)):
        line["line_no"] = number
    assert [line.line_no for line in validate_draft(data).lines] == [10, 3, 7]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"draft_order_id": ', "invalid JSON: EOF while parsing a value at line 1 column 19"),
        (b"{\n  'a': 1}", "invalid JSON: key must be a string at line 2 column 3"),
        (b"", "invalid JSON: EOF while parsing a value at line 1 column 0"),
        (b"[1, 2]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
    ],
)
def test_document_level_problems(raw: bytes | str, reason: str) -> None:
    err = problems_of(raw)
    assert err.fields == ["(document)"]
    assert err.message == f"invalid draft: (document): {reason}"


@pytest.mark.parametrize("value", [None, 42, [1], object()])
def test_non_document_input(value: Any) -> None:
    assert problems_of(value).fields == ["(document)"]


SECRET = "SECRET-ZEBRA-7781"


def test_no_input_value_is_echoed() -> None:
    data = example()
    data["draft_order_id"] = SECRET
    data["org_id"] = SECRET + "-" * 30
    data["approved_at"] = SECRET
    data["approved_by"] = SECRET
    data["customer"]["id"] = "zz" + SECRET
    data["customer"]["name"] = SECRET * 100
    data["header"]["currency"] = SECRET
    data["header"]["order_date"] = SECRET
    data["header"]["requested_delivery_date"] = "2025-13-45"
    data["lines"][0]["qty"] = SECRET
    data["lines"][0]["unit_price"] = SECRET
    data["lines"][0]["currency"] = SECRET[:3].lower()
    data["lines"][1]["line_no"] = SECRET
    data["source_document"]["sha256"] = SECRET
    data["source_document"]["document_id"] = SECRET
    err = problems_of(data)
    rendered = json.dumps(err.to_json()) + str(err) + repr(err.args)
    assert "ZEBRA" not in rendered and "7781" not in rendered and "sec" not in rendered.lower()
    assert len(err.fields) == 15
    # pydantic's ValidationError quotes inputs; it must not ride along as the
    # cause/context into tracebacks and Temporal failure details.
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__


def test_huge_failure_is_capped() -> None:
    data = with_lines(5000)
    for line in data["lines"]:
        line["qty"] = -1
    err = problems_of(json.dumps(data))
    assert err.fields[:2] == ["lines[0].qty", "lines[1].qty"]
    assert len(err.fields) == 1000
    assert f"… and {5000 - MAX_MESSAGE_PROBLEMS} more problem(s)" in err.message
    assert len(err.message) < 5000


def test_models_are_frozen() -> None:
    draft = validate_draft(example())
    with pytest.raises(Exception):
        draft.org_slug = "other"  # type: ignore[misc]


def test_original_example_untouched_by_validation() -> None:
    data = example()
    before = copy.deepcopy(data)
    validate_draft(data)
    assert data == before
