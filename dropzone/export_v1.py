"""The approved draft order and the ``orderflow_export_json_v1`` file.

Two halves:

* ``DraftOrder`` and friends validate what the order backend hands us.
  ``validate_draft`` turns every pydantic problem into one
  ``InvalidDraftError`` that names each offending field as a dotted path
  (``lines[2].qty``, list indices 0-based as in the JSON array) and never
  echoes an input value: drafts carry customer data and can be huge, and the
  message ends up in ``erp_export.error_json``, in Temporal and in logs.
* ``render_export`` / ``iter_render_export`` turn a validated draft into the
  exact bytes of the export file.

Layout of the export file (decided once; changing it changes every file's
sha256, so it is part of the format):

* UTF-8 without BOM, non-ASCII written as-is (``ensure_ascii`` off), so an ERP
  operator reading the file sees real umlauts;
* pretty-printed with a 2-space indent, ``": "`` after keys, ``","`` at line
  ends, one key per line, exactly like ``json.dumps(obj, indent=2,
  ensure_ascii=False)`` (number spelling aside: floats use the shortest
  round-trip form, e.g. ``1e16``);
* keys always present and in the order of the ``ExportV1`` models below; absent values are
  ``null``;
* timestamps in UTC with ``Z`` (``2025-12-26T10:00:00Z``, fractional seconds
  only if the draft had them), dates ``YYYY-MM-DD``, UUIDs lower-case with
  dashes;
* integers stay integers and decimals stay decimals (``2`` vs ``10.0`` as in
  the draft);
* one trailing newline.

The serialisation itself is done by pydantic-core (Rust); Python code only
runs once per draft or once per chunk, never per field, because rendering
300,000-line drafts has to stay fast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    GetCoreSchemaHandler,
    ValidationError,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from dropzone.errors import InvalidDraftError

EXPORT_FORMAT_VERSION = "orderflow_export_json_v1"

# How many problems an InvalidDraftError spells out. A broken 300,000-line
# draft would otherwise produce a multi-megabyte message and field list, which
# Temporal's failure payload limit and the ledger's error_json cannot carry.
MAX_MESSAGE_PROBLEMS = 50
MAX_REPORTED_FIELDS = 1000

# Active ISO 4217 codes of money a customer can pay in (snapshot 2025).
# Deliberately left out: fund and accounting units (BOV, CHE, CHW, CLF, COU,
# MXV, USN, UYI, UYW, XDR, XSU, XUA, XB*), precious metals (XAU, XAG, XPD,
# XPT), and the test/no-currency codes XTS and XXX -- none of them belongs on
# a sales order. Withdrawn codes (HRK, CUC, SLL, ZWL, ...) are rejected; ANG
# is kept while the Caribbean guilder (XCG) replaces it.
ISO_4217_CURRENCIES: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND
    BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF
    DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD
    HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW
    KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN
    PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN
    SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED
    VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()
)

# Patterns are referenced by the error formatter below, which maps each one
# to a human reason instead of printing the regex.
_NOT_BLANK = r"\S"
_CURRENCY_FORMAT = re.compile(r"[A-Z]{3}")
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_SHA256 = r"^[0-9a-fA-F]{64}$"
# An org slug names a tenant in files and paths (`../../x` must never pass).
_SLUG = r"^[a-z0-9][a-z0-9-]*$"
_PATTERN_REASONS = {
    _NOT_BLANK: "must not be blank",
    _SLUG: "must be lower-case letters, digits and hyphens (a slug such as acme-gmbh)",
    _EMAIL: "must be an e-mail address",
    _SHA256: "must be 64 hexadecimal characters (sha256)",
}


# --------------------------------------------------------------------------
# Field types. Validators here run once per draft (header fields) or are
# pure Rust constraints (line fields), so a 300,000-line draft stays cheap.
# --------------------------------------------------------------------------


def _require_timestamp_text(value: Any) -> Any:
    # pydantic's lax mode would take 1735207200 as a Unix timestamp; the
    # contract says RFC 3339, and a number here is a backend bug worth seeing.
    if isinstance(value, (str, datetime)):
        return value
    raise PydanticCustomError("rfc3339_type", "must be an RFC 3339 timestamp string")


def _to_utc(value: datetime) -> datetime:
    # Normalising here makes the rendered file independent of the offset the
    # backend happened to send, so the same instant always yields the same bytes.
    return value.astimezone(timezone.utc)


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _require_date_text(value: Any) -> Any:
    # Lax mode would accept numbers and full timestamps for a date; only the
    # plain YYYY-MM-DD form means the same thing to every reader.
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DATE.fullmatch(value):
        return value
    raise PydanticCustomError("iso_date_type", "must be a date (YYYY-MM-DD)")


def _lower(value: str) -> str:
    return value.lower()


Text = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_NOT_BLANK)]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=_SLUG)]
OptionalText = Annotated[str, StringConstraints(max_length=255)] | None
LongText = Annotated[str, StringConstraints(max_length=4000)] | None
Email = Annotated[str, StringConstraints(max_length=254, pattern=_EMAIL)]
# A Literal is checked by pydantic-core with a hash lookup; a Python validator
# here would run once per order line.
Currency = Literal[tuple(sorted(ISO_4217_CURRENCIES))]  # type: ignore[valid-type]
Sha256Hex = Annotated[str, StringConstraints(pattern=_SHA256), AfterValidator(_lower)]
Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_require_timestamp_text), AfterValidator(_to_utc)
]
IsoDate = Annotated[date, BeforeValidator(_require_date_text)]
# Strict numbers: "10" (a string) or true (a bool) is a backend bug, not a
# quantity. int | float keeps 2 as 2 and 10.0 as 10.0 in the output. The
# bounds sit on each member, not on the union: pydantic can only apply a bound
# to a union through a Python validator, which doubled the cost per line.


class _SerializeByValue:
    """Serialize a number union by the value's own type instead of trying each member.

    Validation already guarantees an int or a float, which is exactly what the
    union's serializer would pick; skipping its member checks cut ~20 % off
    rendering the order lines (benchmarks/), with the same bytes.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> Any:
        schema = handler(source)
        schema["serialization"] = core_schema.simple_ser_schema("any")
        return schema


Quantity = Annotated[
    Annotated[StrictInt, Field(gt=0)] | Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)],
    _SerializeByValue(),
]
Price = Annotated[
    Annotated[StrictInt, Field(ge=0)] | Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] | None,
    _SerializeByValue(),
]
LineNo = Annotated[StrictInt, Field(gt=0)]

# extra="ignore": the backend may add fields to its draft before this worker
# is upgraded; an unknown key must not stop an export. It also means nothing
# unknown can leak into the export file, whose keys are fixed by the models.
# frozen: a validated draft is a value; nothing downstream may edit it.
_MODEL_CONFIG = ConfigDict(extra="ignore", frozen=True)


# --------------------------------------------------------------------------
# Input: the approved draft. Field order of the nested models is
# also their order in the export file (5.2), which is why they are reused
# there: the spec gives both the same shape.
# --------------------------------------------------------------------------


class DraftCustomer(BaseModel):
    model_config = _MODEL_CONFIG

    id: UUID
    erp_customer_number: Text
    name: Text


class DraftHeader(BaseModel):
    model_config = _MODEL_CONFIG

    external_order_number: OptionalText = None
    order_date: IsoDate
    currency: Currency
    requested_delivery_date: IsoDate | None = None
    notes: LongText = None


class DraftLine(BaseModel):
    model_config = _MODEL_CONFIG

    line_no: LineNo
    internal_sku: Text
    qty: Quantity
    uom: Text
    unit_price: Price = None
    currency: Currency
    customer_sku_raw: OptionalText = None
    description: LongText = None


class SourceDocument(BaseModel):
    model_config = _MODEL_CONFIG

    document_id: UUID
    file_name: Text
    sha256: Sha256Hex


def _line_no_of(item: Any) -> int | None:
    number = item.get("line_no") if isinstance(item, dict) else getattr(item, "line_no", None)
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    return None


def _duplicate_line_nos(raw: Any) -> list[InitErrorDetails]:
    """One error per line whose line_no an earlier line already used."""
    if not isinstance(raw, list):
        return []
    first_index: dict[int, int] = {}
    problems: list[InitErrorDetails] = []
    for index, item in enumerate(raw):
        number = _line_no_of(item)
        if number is None:
            continue
        if number in first_index:
            problems.append(
                InitErrorDetails(
                    type=PydanticCustomError(
                        "duplicate_line_no",
                        "duplicate line_no (already used by lines[{first}])",
                        {"first": first_index[number]},
                    ),
                    loc=(index, "line_no"),
                    input=None,
                )
            )
        else:
            first_index[number] = index
    return problems


def _unique_line_nos(lines: list[DraftLine]) -> list[DraftLine]:
    # An after-validator, i.e. only reached when every line is valid. A wrap
    # validator would also see broken drafts, but it makes pydantic build the
    # whole raw JSON as Python objects first, which doubled validation time;
    # validate_draft covers the broken case on its (cold) error path instead.
    # Fast path: a set of the numbers costs ~10 µs for 500 lines; the full scan
    # (which names each duplicate) ~130 µs, so it only runs when one exists.
    if len({line.line_no for line in lines}) == len(lines):
        return lines
    duplicates = _duplicate_line_nos(lines)
    if duplicates:
        raise ValidationError.from_exception_data("lines", duplicates)
    return lines


class DraftOrder(BaseModel):
    model_config = _MODEL_CONFIG

    draft_order_id: UUID
    org_id: UUID
    org_slug: Slug
    approved_at: Timestamp
    approved_by: Email
    customer: DraftCustomer
    header: DraftHeader
    lines: Annotated[list[DraftLine], Field(min_length=1), AfterValidator(_unique_line_nos)]
    source_document: SourceDocument | None = None


# --------------------------------------------------------------------------
# Output: orderflow_export_json_v1. Key order = field order.
# --------------------------------------------------------------------------


class ExportMeta(BaseModel):
    model_config = _MODEL_CONFIG

    created_by: str
    source_document: SourceDocument | None


class ExportV1(BaseModel):
    model_config = _MODEL_CONFIG

    export_version: Literal["orderflow_export_json_v1"] = EXPORT_FORMAT_VERSION
    org_slug: str
    draft_order_id: UUID
    approved_at: datetime
    customer: DraftCustomer
    header: DraftHeader
    lines: list[DraftLine]
    meta: ExportMeta


# --------------------------------------------------------------------------
# Validation errors → InvalidDraftError
# --------------------------------------------------------------------------

DOCUMENT = "(document)"

# Reasons are built from the error type and the schema's own constraint
# values (ctx), never from pydantic's msg, which for some types quotes parts
# of the input (a UUID's offending character, for instance).
_REASONS: dict[str, str] = {
    "missing": "is required",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "list_type": "must be a JSON array",
    "string_type": "must be a string",
    "string_unicode": "must be valid Unicode text",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be greater than or equal to {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be less than or equal to {le}",
    "string_too_long": "must be at most {max_length} characters",
    "too_short": "must contain at least {min_length} item(s)",
    "too_long": "must contain at most {max_length} item(s)",
    "uuid_type": "must be a UUID",
    "uuid_parsing": "must be a UUID",
    "uuid_version": "must be a UUID",
    "datetime_type": "must be an RFC 3339 timestamp",
    "datetime_parsing": "must be an RFC 3339 timestamp",
    "datetime_from_date_parsing": "must be an RFC 3339 timestamp",
    "datetime_object_invalid": "must be an RFC 3339 timestamp",
    "timezone_aware": "must include a UTC offset (naive timestamps are ambiguous)",
    "date_type": "must be a date (YYYY-MM-DD)",
    "date_parsing": "must be a date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "must be a date (YYYY-MM-DD)",
    "date_from_datetime_inexact": "must be a date (YYYY-MM-DD)",
    "literal_error": "must be {expected}",
    "frozen_instance": "cannot be changed",
}
# Our own PydanticCustomError types: their messages are written above and
# contain no input, so they are used verbatim.
_OWN_TYPES = frozenset({"rfc3339_type", "iso_date_type", "duplicate_line_no"})
# pydantic tags errors inside an ``int | float`` union with the member name.
_UNION_TAGS = frozenset({"int", "float", "constrained-int", "constrained-float"})
_NUMBER_TYPE_ERRORS = frozenset({"int_type", "float_type"})


def _reason(error: dict[str, Any], pattern_reasons: Mapping[str, str]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _OWN_TYPES:
        return str(error["msg"])
    if kind == "json_invalid":
        # jiter's text is "<what> at line L column C"; it quotes no input.
        return f"invalid JSON: {ctx.get('error', 'unparseable')}"
    if kind == "literal_error" and error["loc"] and error["loc"][-1] == "currency":
        # The input is only classified here, never quoted.
        value = error.get("input")
        if isinstance(value, str) and _CURRENCY_FORMAT.fullmatch(value):
            return "unknown currency code"
        return "must be 3 upper-case letters (ISO 4217)"
    if kind in ("too_short", "too_long") and isinstance(error.get("input"), str):
        # A string constraint behind a before-validator is reported with the
        # generic length types; word it like the string ones.
        kind = "string_" + kind
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {ctx.get('min_length')} characters"
    if kind == "string_pattern_mismatch":
        return pattern_reasons.get(str(ctx.get("pattern")), "has an invalid format")
    template = _REASONS.get(kind)
    if template is None:
        return f"is invalid ({kind})"
    # The float member of int | float carries its bound as 0.0; say 0 so both
    # members give the same reason and collapse into one.
    ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    try:
        return template.format(**ctx)
    except (KeyError, IndexError):
        return template


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('lines', 2, 'qty')`` → ``lines[2].qty``; the empty loc is the document."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or DOCUMENT


def _union_reasons(errors: list[dict[str, Any]], pattern_reasons: Mapping[str, str]) -> list[str]:
    """Collapse the per-member errors of an ``int | float`` field into what matters.

    -1 fails both members with "greater than 0", "x" fails both with a type
    error, -0.5 fails the int member by type and the float member by bound:
    the bound is the useful part.
    """
    meaningful = [e for e in errors if e["type"] not in _NUMBER_TYPE_ERRORS]
    if not meaningful:
        return ["must be a number"]
    return [_reason(e, pattern_reasons) for e in meaningful]


def _located(loc: tuple[int | str, ...], within: tuple[int | str, ...], index_offset: int) -> tuple[int | str, ...]:
    if loc and isinstance(loc[0], int):
        loc = (loc[0] + index_offset, *loc[1:])
    return within + loc


def validation_problems(
    exc: ValidationError,
    pattern_reasons: Mapping[str, str] | None = None,
    *,
    within: tuple[int | str, ...] = (),
    index_offset: int = 0,
) -> list[tuple[str, str]]:
    """(path, reason) pairs for every error, deduplicated, in pydantic's order.

    Reasons never contain input values. ``pattern_reasons`` maps a
    ``StringConstraints`` pattern to the reason shown instead of the regex.
    ``within``/``index_offset`` place errors of a part validated on its own
    (a batch of order lines starting at ``lines[index_offset]``) in the document.
    """
    reasons_for_pattern = {**_PATTERN_REASONS, **(pattern_reasons or {})}
    raw: list[tuple[str, list[dict[str, Any]], bool]] = []
    union_groups: dict[str, list[dict[str, Any]]] = {}
    for error in exc.errors(include_url=False):
        loc = _located(tuple(error["loc"]), within, index_offset)
        if loc and loc[-1] in _UNION_TAGS:
            path = field_path(loc[:-1])
            if path not in union_groups:
                union_groups[path] = []
                raw.append((path, union_groups[path], True))
            union_groups[path].append(error)
        else:
            raw.append((field_path(loc), [error], False))
    seen: set[tuple[str, str]] = set()
    problems: list[tuple[str, str]] = []
    for path, errors, is_union in raw:
        if is_union:
            reasons = _union_reasons(errors, reasons_for_pattern)
        else:
            reasons = [_reason(errors[0], reasons_for_pattern)]
        for reason in reasons:
            if (path, reason) not in seen:
                seen.add((path, reason))
                problems.append((path, reason))
    return problems


def invalid_draft(problems: list[tuple[str, str]]) -> InvalidDraftError:
    shown = "; ".join(f"{path}: {reason}" for path, reason in problems[:MAX_MESSAGE_PROBLEMS])
    hidden = len(problems) - MAX_MESSAGE_PROBLEMS
    if hidden > 0:
        shown += f"; … and {hidden} more problem(s)"
    fields = list(dict.fromkeys(path for path, _ in problems))[:MAX_REPORTED_FIELDS]
    return InvalidDraftError(f"invalid draft: {shown}", fields=fields)


def duplicate_line_no_problem(index: int, first: int) -> tuple[str, str]:
    """The problem ``validate_draft`` reports for ``lines[index]`` reusing ``lines[first]``'s number."""
    return field_path(("lines", index, "line_no")), f"duplicate line_no (already used by lines[{first}])"


def _raw_duplicate_problems(data: bytes | str | dict[str, Any]) -> list[tuple[str, str]]:
    """Duplicate line numbers in a draft whose lines failed validation.

    Cold path only: the after-validator cannot run when some line is invalid,
    so the raw lines are scanned here to still name every offending field.
    """
    try:
        raw = data if isinstance(data, dict) else json.loads(data)
    except (ValueError, RecursionError):
        return []
    if not isinstance(raw, dict):
        return []
    details = _duplicate_line_nos(raw.get("lines"))
    if not details:
        return []
    exc = ValidationError.from_exception_data(
        "DraftOrder", [{**d, "loc": ("lines", *d["loc"])} for d in details]
    )
    return validation_problems(exc)


def validate_draft(data: bytes | str | dict[str, Any]) -> DraftOrder:
    """Validate an approved draft; raise ``InvalidDraftError`` naming every bad field.

    ``bytes``/``str`` are parsed as JSON (by pydantic-core, in one pass);
    a ``dict`` is taken as already-decoded JSON.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, (bytes, str, dict)):
        raise invalid_draft([(DOCUMENT, "must be a JSON object")])
    try:
        if isinstance(data, dict):
            return DraftOrder.model_validate(data)
        return DraftOrder.model_validate_json(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
    known = set(problems)
    problems += [p for p in _raw_duplicate_problems(data) if p not in known]
    raise invalid_draft(problems)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_INDENT = 2
_LINES_ADAPTER: TypeAdapter[list[DraftLine]] = TypeAdapter(list[DraftLine])
# The lines array sits one level deep in the document: in the whole-document
# rendering each of its rows carries one indent step more than when the same
# list is rendered on its own.
_NESTING = b"\n" + b" " * _INDENT
_LINES_OPEN = _NESTING + b'"lines": ['


def _export_document(draft: DraftOrder, lines: list[DraftLine]) -> ExportV1:
    # model_construct: the draft is already validated, so re-validating would
    # only cost time (and the nested models are shared, not copied).
    return ExportV1.model_construct(
        export_version=EXPORT_FORMAT_VERSION,
        org_slug=draft.org_slug,
        draft_order_id=draft.draft_order_id,
        approved_at=draft.approved_at,
        customer=draft.customer,
        header=draft.header,
        lines=lines,
        meta=ExportMeta.model_construct(
            created_by=draft.approved_by, source_document=draft.source_document
        ),
    )


def _to_json(document: ExportV1) -> bytes:
    # The serializer's to_json returns bytes directly; model_dump_json would
    # return str and cost one more full copy to encode.
    return ExportV1.__pydantic_serializer__.to_json(document, indent=_INDENT)


def render_export(draft: DraftOrder) -> bytes:
    """The exact bytes of the export file (layout: see module docstring)."""
    return _to_json(_export_document(draft, draft.lines)) + b"\n"


def export_head_and_tail(draft: DraftOrder) -> tuple[bytes, bytes]:
    """The export file's bytes before and after its order lines.

    ``head + render_lines_chunk(first chunk, first=True) + render_lines_chunk(next,
    first=False) + … + tail`` is ``render_export``'s output; only ``draft``'s
    non-line fields are read, so a draft with ``lines=[]`` (built with
    ``model_construct`` from a validated header) works too.
    """
    skeleton = _to_json(_export_document(draft, []))
    # Top-level keys are the only ones indented by exactly one step, and a
    # quote inside a string value is always escaped, so this marker is unique.
    head, sep, tail = skeleton.partition(_LINES_OPEN + b"]")
    if not sep or _LINES_OPEN in tail:  # pragma: no cover - layout invariant
        raise AssertionError("lines array not found in export skeleton")
    return head + _LINES_OPEN, _NESTING + b"]" + tail + b"\n"


def render_lines_chunk(lines: list[DraftLine], *, first: bool) -> bytes:
    """One run of validated order lines as they appear inside the export's array."""
    rendered = _LINES_ADAPTER.dump_json(lines, indent=_INDENT)
    # rendered == b"[\n  {...},\n  {...}\n]": drop the brackets, indent once more.
    body = rendered[1:-2].replace(b"\n", _NESTING)
    return body if first else b"," + body


def iter_render_export(draft: DraftOrder, chunk_lines: int = 1000) -> Iterator[bytes]:
    """``render_export``'s bytes in pieces of at most ``chunk_lines`` order lines.

    The document is rendered without its lines, split where the lines array
    goes, and each chunk of lines is rendered as a list and re-indented one
    level. Raw newlines in pydantic's JSON only ever come from the indent
    (newlines inside strings are escaped as ``\\n``), so shifting them is safe.
    """
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be at least 1")
    head, tail = export_head_and_tail(draft)
    yield head
    lines = draft.lines
    for start in range(0, len(lines), chunk_lines):
        yield render_lines_chunk(lines[start : start + chunk_lines], first=start == 0)
    yield tail
