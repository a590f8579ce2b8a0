"""The draft an order backend hands us, and the export file's document: pydantic models only.

Field order is the format: the export file's keys come out in the order of the
``ExportV1`` fields and of the draft models nested in it (docs/export_format.md).
The rules a whole draft must meet beyond one field (``lines`` non-empty, every
``line_no`` used once) are checked by the pipeline (dropzone/export_v1/pipeline.py),
which validates the header and the lines separately: validate a draft with
``validate_draft``, never with ``DraftOrder.model_validate``.
"""

from __future__ import annotations

import re
import typing
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
    GetCoreSchemaHandler,
    StrictFloat,
    StrictInt,
    StringConstraints,
    create_model,
)
from pydantic_core import PydanticCustomError, core_schema

EXPORT_FORMAT_VERSION = "orderflow_export_json_v1"

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

# The patterns are also keys of the problem wording (dropzone/export_v1/problems.py),
# which maps each one to a human reason instead of printing the regex.
NOT_BLANK = r"\S"
CURRENCY_FORMAT = re.compile(r"[A-Z]{3}")
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
SHA256 = r"^[0-9a-fA-F]{64}$"
# An org slug names a tenant in files and paths (`../../x` must never pass).
SLUG = r"^[a-z0-9][a-z0-9-]*$"


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


Text = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NOT_BLANK)]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=SLUG)]
OptionalText = Annotated[str, StringConstraints(max_length=255)] | None
LongText = Annotated[str, StringConstraints(max_length=4000)] | None
Email = Annotated[str, StringConstraints(max_length=254, pattern=EMAIL)]
# A Literal is checked by pydantic-core with a hash lookup; a Python validator
# here would run once per order line.
Currency = Literal[tuple(sorted(ISO_4217_CURRENCIES))]  # type: ignore[valid-type]
Sha256Hex = Annotated[str, StringConstraints(pattern=SHA256), AfterValidator(_lower)]
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
# Input: the approved draft. The nested models are reused in the export
# file, in the same field order: both have the same shape.
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


class DraftOrder(BaseModel):
    """An approved sales-order draft; every ``line_no`` is used once."""

    # Built by ``validate_draft`` (pipeline.py), which also checks the line numbers;
    # this docstring is the API's description of the schema (docs/openapi.json).

    model_config = _MODEL_CONFIG

    draft_order_id: UUID
    org_id: UUID
    org_slug: Slug
    approved_at: Timestamp
    approved_by: Email
    customer: DraftCustomer
    header: DraftHeader
    lines: Annotated[list[DraftLine], Field(min_length=1)]
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


def model_without_lines(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` without its ``lines`` field, built from the model itself so the two never drift
    (the draft's header in the pipeline, the export file's in the ERP simulator's check)."""
    hints = typing.get_type_hints(model, include_extras=True)
    fields: dict[str, Any] = {
        name: (hints[name], ... if info.is_required() else info.default)
        for name, info in model.model_fields.items()
        if name != "lines"
    }
    return create_model(model.__name__, __config__=model.model_config, **fields)
