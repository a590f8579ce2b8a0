"""The words of an invalid draft: every problem as ``(field path, reason)``, and the one error.

Rules (docs/export_format.md, "Problems"):

* a field path is dotted with 0-based list indices as in the JSON array
  (``lines[2].qty``); a problem of the whole document is ``(document)``;
* a reason is built from pydantic's error type and the schema's own constraint
  values, never from pydantic's message, which for some types quotes parts of
  the input (a UUID's offending character, for instance): drafts carry customer
  data and can be huge, and the message ends up in ``erp_export.error_json``,
  in Temporal and in logs;
* ``InvalidDraftError`` spells out at most ``MAX_MESSAGE_PROBLEMS`` problems
  and lists at most ``MAX_REPORTED_FIELDS`` fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from dropzone.errors import InvalidDraftError
from dropzone.export_v1.models import CURRENCY_FORMAT, EMAIL, NOT_BLANK, SHA256, SLUG

# A broken 300,000-line draft would otherwise produce a multi-megabyte message
# and field list, which Temporal's failure payload limit and the ledger's
# error_json cannot carry.
MAX_MESSAGE_PROBLEMS = 50
MAX_REPORTED_FIELDS = 1000

DOCUMENT = "(document)"

Problems = list[tuple[str, str]]

_PATTERN_REASONS = {
    NOT_BLANK: "must not be blank",
    SLUG: "must be lower-case letters, digits and hyphens (a slug such as acme-gmbh)",
    EMAIL: "must be an e-mail address",
    SHA256: "must be 64 hexadecimal characters (sha256)",
}

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
# Our own PydanticCustomError types (dropzone/export_v1/models.py): their
# messages contain no input, so they are used verbatim.
_OWN_TYPES = frozenset({"rfc3339_type", "iso_date_type"})
# pydantic tags errors inside an ``int | float`` union with the member name.
_UNION_TAGS = frozenset({"int", "float", "constrained-int", "constrained-float"})
_NUMBER_TYPE_ERRORS = frozenset({"int_type", "float_type"})


def _reason(error: dict[str, Any], pattern_reasons: Mapping[str, str]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _OWN_TYPES:
        return str(error["msg"])
    if kind == "json_invalid":
        return invalid_json(ctx.get("error", "unparseable"))
    if kind == "literal_error" and error["loc"] and error["loc"][-1] == "currency":
        # The input is only classified here, never quoted.
        value = error.get("input")
        if isinstance(value, str) and CURRENCY_FORMAT.fullmatch(value):
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


def invalid_json(parser_text: str) -> str:
    """The reason for a document that is not JSON; both parsers' texts
    (``<what> at line L column C``) quote no input."""
    return f"invalid JSON: {parser_text}"


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
) -> Problems:
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
    problems: Problems = []
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


def duplicate_line_no_problem(index: int, first: int) -> tuple[str, str]:
    """``lines[index]`` reuses the ``line_no`` of ``lines[first]``."""
    return field_path(("lines", index, "line_no")), f"duplicate line_no (already used by lines[{first}])"


def invalid_draft(problems: Problems) -> InvalidDraftError:
    shown = "; ".join(f"{path}: {reason}" for path, reason in problems[:MAX_MESSAGE_PROBLEMS])
    hidden = len(problems) - MAX_MESSAGE_PROBLEMS
    if hidden > 0:
        shown += f"; … and {hidden} more problem(s)"
    fields = list(dict.fromkeys(path for path, _ in problems))[:MAX_REPORTED_FIELDS]
    return InvalidDraftError(f"invalid draft: {shown}", fields=fields)


def document_problem(reason: str) -> InvalidDraftError:
    return invalid_draft([(DOCUMENT, reason)])
