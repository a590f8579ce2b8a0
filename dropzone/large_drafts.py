"""Validate and render drafts too large to hold as models (``draft_ref`` drafts).

``validate_draft`` + ``render_export`` keep every order line as a pydantic model
at once: a 300,000-line draft peaked at ~700 MiB when held whole (measured on a 2-core machine). Here the draft's
JSON bytes are held once and everything else lives one batch of lines at a time:

* msgspec splits the document into its top-level values and the ``lines``
  array into its items *without decoding them* (``msgspec.Raw`` spans of the
  input buffer, in C);
* the header part and each batch of lines are validated by the very same
  pydantic models as ``validate_draft`` from their raw JSON (jiter), so types,
  numbers and strings come out exactly as on the whole-document path and the
  rendered bytes are identical (tests/test_large_draft.py);
* rendered pieces are handed to ``write`` while everything seen so far is
  valid; validation always runs to the end, so an invalid draft is reported
  with every offending field, like ``validate_draft``, in the same order.

No Temporal imports: this is domain code.
"""

from __future__ import annotations

import mmap
import re
import typing
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from dropzone.export_v1 import (
    DOCUMENT,
    DraftLine,
    DraftOrder,
    duplicate_line_no_problem,
    export_head_and_tail,
    invalid_draft,
    render_lines_chunk,
    validation_problems,
)

# Lines validated and rendered per step. Small on purpose: a batch's models
# (~3 GC-tracked objects per line) then die young, before the cyclic GC promotes
# them; 2,000-line batches spent half their CPU time in GC collections (300,000
# lines: 3.1 s of CPU at 2,000 per batch, 1.5 s at 100; benchmarks/).
LINE_BATCH = 100

Problems = list[tuple[str, str]]
# Whatever msgspec reads without a copy: bytes, bytearray, memoryview, mmap.
Buffer = bytes | bytearray | memoryview | mmap.mmap

_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_ANY = msgspec.json.Decoder()
_KEY = msgspec.json.Encoder()
# cache_strings="keys": jiter caches only the (few, repeated) keys; caching the
# mostly unique values of 300,000 lines cost ~20 % of validation time.
_LINES = TypeAdapter(list[DraftLine], config=ConfigDict(cache_strings="keys"))
_BYTE_OFFSET = re.compile(r"\s*\(byte (\d+)\)$")
_SCAN_CHUNK = 1024 * 1024
# Only for a ``lines`` value that is not a non-empty array: words its problem
# exactly like DraftOrder does.
_LINES_FIELD = TypeAdapter(Annotated[list[DraftLine], Field(min_length=1)])


def model_without_lines(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` without its ``lines`` field, built from the model itself so the two never drift
    (the draft here, the export file in the ERP simulator's check)."""
    hints = typing.get_type_hints(model, include_extras=True)
    fields: dict[str, Any] = {
        name: (hints[name], ... if info.is_required() else info.default)
        for name, info in model.model_fields.items()
        if name != "lines"
    }
    return create_model(model.__name__, __config__=model.model_config, **fields)


_ENVELOPE = model_without_lines(DraftOrder)


@dataclass(frozen=True)
class DraftHead:
    """A fully validated draft, without its lines (``draft.lines`` is empty)."""

    draft: DraftOrder
    line_count: int


def split_document(data: Buffer) -> dict[str, msgspec.Raw]:
    """The top-level values of a JSON object as raw spans of ``data`` (not decoded).

    Raises msgspec's ValidationError (not an object) or DecodeError (not JSON).
    The spans point into ``data``: a memory-mapped file stays open while they live.
    """
    return _TOP_LEVEL.decode(data)


def split_items(raw: msgspec.Raw) -> list[msgspec.Raw] | None:
    """The raw items of a JSON array, or None when ``raw`` is another value."""
    try:
        return _RAW_ITEMS.decode(raw)
    except msgspec.ValidationError:
        return None


def json_error_position(data: Buffer, exc: msgspec.DecodeError) -> str:
    """msgspec's reason (it quotes no input) with the place, as jiter words it:
    ``invalid character at line 3 column 7 (byte 41)``. Truncated input ends at its end."""
    text = str(exc)
    found = _BYTE_OFFSET.search(text)
    with memoryview(data) as view:
        if found is not None:
            offset, text = int(found[1]), text[: found.start()]
        elif "truncated" in text:
            offset = view.nbytes
        else:
            return text
        line, column = 1, offset + 1
        # Counted 1 MiB at a time: the cold path of a draft that may be hundreds of MB.
        for start in range(0, offset, _SCAN_CHUNK):
            piece = bytes(view[start : min(start + _SCAN_CHUNK, offset)])
            newlines = piece.count(b"\n")
            if newlines:
                line += newlines
                column = offset - (start + piece.rfind(b"\n"))
    return f"{text.removeprefix('JSON is malformed: ')} at line {line} column {column} (byte {offset})"


def _split_top_level(data: Buffer) -> dict[str, msgspec.Raw]:
    try:
        return split_document(data)
    except msgspec.ValidationError:
        raise invalid_draft([(DOCUMENT, "must be a JSON object")]) from None
    except msgspec.DecodeError as exc:
        raise invalid_draft([(DOCUMENT, f"invalid JSON: {json_error_position(data, exc)}")]) from None
    except RecursionError:
        # msgspec gives up on deep nesting by raising it; the inline validator
        # (jiter) names the same input "recursion limit exceeded".
        raise invalid_draft([(DOCUMENT, "invalid JSON: recursion limit exceeded")]) from None


def _validate_envelope(top: dict[str, msgspec.Raw]) -> tuple[DraftOrder | None, Problems]:
    doc = b"{" + b",".join(_KEY.encode(k) + b":" + bytes(v) for k, v in top.items() if k != "lines") + b"}"
    try:
        envelope = _ENVELOPE.model_validate_json(doc)
    except ValidationError as exc:
        return None, validation_problems(exc)
    values = {name: getattr(envelope, name) for name in _ENVELOPE.model_fields}
    return DraftOrder.model_construct(**values, lines=[]), []


def check_lines(start: int, raw_lines: list[msgspec.Raw]) -> tuple[list[DraftLine] | None, Problems]:
    """Validate raw order lines ``lines[start:]``: their models, or None and their problems."""
    try:
        return _LINES.validate_json(b"[" + b",".join(raw_lines) + b"]"), []
    except ValidationError as exc:
        return None, validation_problems(exc, within=("lines",), index_offset=start)


class _LineChecker:
    """Validates batches of raw lines, tracking line numbers across batches.

    While every line is valid and the numbers only go up (what backends send),
    no number can repeat and each is kept as 8 bytes in an array; the index of
    first uses (a dict, ~100 bytes per line) is built only when that stops.
    """

    def __init__(self) -> None:
        self.problems: Problems = []  # per-line problems, in document order
        self.duplicates: Problems = []
        self._rising: array[int] | None = array("q")  # None once _first_index is in use
        self._first_index: dict[int, int] = {}

    def _index(self) -> dict[int, int]:
        if self._rising is not None:  # lines[i] has number rising[i], all distinct
            self._first_index = {number: index for index, number in enumerate(self._rising)}
            self._rising = None
        return self._first_index

    def _number(self, index: int, number: Any) -> None:
        if not isinstance(number, int) or isinstance(number, bool):
            return
        first = self._index().setdefault(number, index)
        if first != index:
            self.duplicates.append(duplicate_line_no_problem(index, first))

    def check(self, start: int, raw_lines: list[msgspec.Raw]) -> list[DraftLine] | None:
        """The batch's models, or None (and its problems recorded) when a line is invalid."""
        lines, problems = check_lines(start, raw_lines)
        if lines is None:
            self.problems += problems
            self._index()  # from here on lines and numbers need not pair up
            for offset, raw in enumerate(raw_lines):  # cold path: numbers of the raw lines
                try:
                    item = _ANY.decode(raw)
                except msgspec.DecodeError:
                    continue
                if isinstance(item, dict):
                    self._number(start + offset, item.get("line_no"))
            return None
        numbers = [line.line_no for line in lines]
        rising = self._rising
        if rising is not None and (not rising or rising[-1] < numbers[0]) and all(map(int.__lt__, numbers, numbers[1:])):
            rising.extend(numbers)  # the common case: above every number so far, so none repeats
        elif len(set(numbers)) == len(numbers) and self._index().keys().isdisjoint(numbers):
            self._first_index.update(zip(numbers, range(start, start + len(numbers))))
        else:
            for offset, number in enumerate(numbers):
                self._number(start + offset, number)
        return lines


def _split_lines(raw: msgspec.Raw | None) -> tuple[list[msgspec.Raw], Problems]:
    """The raw items of a non-empty ``lines`` array, or the problems of any other value."""
    if raw is None:
        return [], [("lines", "is required")]
    items = split_items(raw)
    if items:
        return items, []
    try:
        _LINES_FIELD.validate_json(bytes(raw))
    except ValidationError as exc:
        return [], validation_problems(exc, within=("lines",))
    return [], [("lines", "must contain at least 1 item(s)")]  # pragma: no cover - defensive


def stream_validated_export(
    data: Buffer,
    write: Callable[[bytes], object] | None = None,
    *,
    batch_lines: int = LINE_BATCH,
) -> DraftHead:
    """Validate a draft's JSON and, if ``write`` is given, render its export file into it.

    ``write`` receives ``render_export``'s bytes in order, in pieces. It stops
    being called at the first problem; validation goes on so that the
    ``InvalidDraftError`` names every offending field. After an error the
    caller discards whatever was written.
    """
    if batch_lines < 1:
        raise ValueError("batch_lines must be at least 1")
    top = _split_top_level(data)
    draft, envelope_problems = _validate_envelope(top)
    writing = write is not None and draft is not None
    tail = b""
    if writing:
        assert write is not None and draft is not None
        head, tail = export_head_and_tail(draft)
        write(head)

    items, line_value_problems = _split_lines(top.get("lines"))
    checker = _LineChecker()
    count = len(items)
    for start in range(0, count, batch_lines):
        lines = checker.check(start, items[start : start + batch_lines])
        writing = writing and lines is not None and not checker.duplicates
        if writing:
            assert write is not None and lines is not None
            write(render_lines_chunk(lines, first=start == 0))
    del items
    problems = _ordered_problems(envelope_problems, line_value_problems, checker)
    if problems:
        raise invalid_draft(problems)
    assert draft is not None
    if write is not None:
        write(tail)
    return DraftHead(draft=draft, line_count=count)


def _ordered_problems(envelope: Problems, lines_value: Problems, checker: _LineChecker) -> Problems:
    """The order ``validate_draft`` reports in: fields in model order, ``lines`` between
    ``header`` and ``source_document``; duplicate numbers in place when every line is
    valid, after everything else when some line is not (DraftOrder's after-validator
    only runs on valid lines; validate_draft appends raw duplicates otherwise)."""
    after = [p for p in envelope if p[0].startswith("source_document")]
    before = [p for p in envelope if not p[0].startswith("source_document")]
    if checker.problems:
        known = set(before + checker.problems + after)
        return before + checker.problems + after + [p for p in checker.duplicates if p not in known]
    return before + lines_value + checker.duplicates + after
