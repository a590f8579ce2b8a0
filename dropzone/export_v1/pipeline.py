"""The one draft pipeline: validate a draft of any size and render its export file as chunks.

Every door and the worker go through ``stream_validated_export`` (``validate_draft``
is the same run, keeping the lines as models), whatever the draft's size and
form:

* **JSON bytes** (a ``draft_ref`` object, a file, a request body, of any size)
  are held once: msgspec splits them into raw spans without decoding them
  (dropzone/export_v1/spans.py), and pydantic validates the header part and
  each batch of ``LINE_BATCH`` lines from their raw JSON (jiter);
* **decoded JSON** (a ``dict``: the workflow input of an inline draft) goes
  through the same stages, the header part and each batch validated from
  Python objects by the very same models.

Stages, for both: the header (every field but ``lines``, by ``DraftOrder``
without its lines) → the lines, a batch at a time (by ``DraftLine``) → the
duplicate ``line_no`` check (``_LineNumbers``, the only one) → the problems in
the order pydantic reports a whole ``DraftOrder`` in → rendered chunks
(dropzone/export_v1/render.py) handed to ``write`` while everything seen so
far is valid. Validation always runs to the end, so an invalid draft is
reported with every offending field. Peak memory is the draft's bytes plus one
batch of models, whatever the size (a 300,000-line draft held as models peaked
at ~700 MiB).

Not-JSON: a buffer of up to ``JITER_WORDS_UP_TO`` bytes that msgspec cannot
split into an object, or a span of which jiter refuses, is decoded whole by
jiter and goes through the decoded path, so a small draft is named in jiter's
words (``EOF while parsing a value at line 1 column 19``) and jiter's reading
of JSON (``NaN`` is a number) decides. A larger one is never decoded whole: the
problem is msgspec's, with its place (``… at line L column C (byte B)``).

No Temporal imports: this is domain code (the workflow calls ``validate_draft``).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import pydantic_core
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from dropzone.export_v1.models import DraftLine, DraftOrder, model_without_lines
from dropzone.export_v1.problems import (
    Problems,
    document_problem,
    duplicate_line_no_problem,
    invalid_draft,
    invalid_json,
    validation_problems,
)
from dropzone.export_v1.render import export_head_and_tail, render_lines_chunk
from dropzone.export_v1.spans import Buffer, json_error_position, split_document, split_items

# Lines validated and rendered per step. Small on purpose: a batch's models
# (~3 GC-tracked objects per line) then die young, before the cyclic GC promotes
# them; 2,000-line batches spent half their CPU time in GC collections (300,000
# lines: 3.1 s of CPU at 2,000 per batch, 1.5 s at 100; benchmarks/).
LINE_BATCH = 100
# The largest inline-draft limit dropzone/settings.py allows (Temporal's payload
# limit): every draft small enough to travel inline is read as jiter reads a
# whole document, and is small enough to decode whole on the cold path.
JITER_WORDS_UP_TO = 1_500_000

# cache_strings="keys": jiter caches only the (few, repeated) keys; caching the
# mostly unique values of 300,000 lines cost ~20 % of validation time.
_LINES = TypeAdapter(list[DraftLine], config=ConfigDict(cache_strings="keys"))
# Only for a ``lines`` value that is not a non-empty array: words its problem
# exactly as DraftOrder does.
_LINES_FIELD = TypeAdapter(Annotated[list[DraftLine], Field(min_length=1)])
_ENVELOPE_MODEL = model_without_lines(DraftOrder)
_ENVELOPE: TypeAdapter[Any] = TypeAdapter(_ENVELOPE_MODEL)
_ANY = msgspec.json.Decoder()
_KEY = msgspec.json.Encoder()
_MISSING: Any = object()


@dataclass(frozen=True)
class DraftHead:
    """A fully validated draft, without its lines (``draft.lines`` is empty
    unless it came from ``validate_draft``)."""

    draft: DraftOrder
    line_count: int


class _NotJson(Exception):
    """A small buffer that msgspec and jiter do not read alike: decode it whole (cold path)."""


class _Source:
    """The draft's top-level values and how each part is validated: from raw JSON spans
    (``as_json``, by jiter) or from decoded Python objects, by the same adapters."""

    def __init__(self, top: Mapping[str, Any], *, as_json: bool, small: bool = False) -> None:
        self.top = top
        self.as_json = as_json
        self.small = small  # may be decoded whole if a part is not JSON

    def _check(self, adapter: TypeAdapter[Any], value: Any, **where: Any) -> tuple[Any, Problems]:
        try:
            return (adapter.validate_json(value) if self.as_json else adapter.validate_python(value)), []
        except ValidationError as exc:
            if self.small and any(error["type"] == "json_invalid" for error in exc.errors(include_url=False)):
                raise _NotJson from None
            return None, validation_problems(exc, **where)

    def envelope(self) -> tuple[Any, Problems]:
        """Every field but ``lines``, validated as ``DraftOrder`` does."""
        rest: Any = {k: v for k, v in self.top.items() if k != "lines"}
        if self.as_json:
            rest = b"{" + b",".join(_KEY.encode(k) + b":" + bytes(v) for k, v in rest.items()) + b"}"
        return self._check(_ENVELOPE, rest)

    def items(self, value: Any) -> list[Any] | None:
        """The items of the ``lines`` value, or None when it is not an array."""
        if self.as_json:
            return split_items(value)
        if isinstance(value, list):
            return value
        return list(value) if isinstance(value, tuple) else None  # what lax validation takes

    def lines_value_problems(self, value: Any) -> Problems:
        """The problem of a ``lines`` value that is not a non-empty array, as ``DraftOrder`` words it."""
        _, problems = self._check(_LINES_FIELD, bytes(value) if self.as_json else value, within=("lines",))
        return problems or [("lines", "must contain at least 1 item(s)")]

    def lines(self, start: int, items: list[Any]) -> tuple[list[DraftLine] | None, Problems]:
        """Validate the items ``lines[start:]``: their models, or None and their problems."""
        value = b"[" + b",".join(items) + b"]" if self.as_json else items
        return self._check(_LINES, value, within=("lines",), index_offset=start)

    def line_no(self, item: Any) -> Any:
        """An item's ``line_no`` as decoded JSON (cold path: the item is invalid)."""
        if self.as_json:
            try:
                item = _ANY.decode(item)
            except msgspec.DecodeError:
                return None
        return item.get("line_no") if isinstance(item, dict) else getattr(item, "line_no", None)


def _split(data: Buffer) -> _Source:
    with memoryview(data) as view:  # released: a live view keeps a memory-mapped file open
        small = view.nbytes <= JITER_WORDS_UP_TO
    try:
        return _Source(split_document(data), as_json=True, small=small)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        if small:
            raise _NotJson from None
        if isinstance(exc, msgspec.ValidationError):
            raise document_problem("must be a JSON object") from None
        if isinstance(exc, RecursionError):  # msgspec gives up on deep nesting by raising it
            raise document_problem(invalid_json("recursion limit exceeded")) from None
        raise document_problem(invalid_json(json_error_position(data, exc))) from None


_RAW_LINES = _Source({}, as_json=True)


def check_lines(start: int, raw_lines: list[msgspec.Raw]) -> tuple[list[DraftLine] | None, Problems]:
    """Validate raw order lines ``lines[start:]``: their models, or None and their problems."""
    return _RAW_LINES.lines(start, raw_lines)


class _LineNumbers:
    """The duplicate ``line_no`` check: each line reusing an earlier line's number is a problem.

    While every line is valid and the numbers only go up (what backends send),
    no number can repeat and each is kept as 8 bytes in an array; the index of
    first uses (a dict, ~100 bytes per line) is built only when that stops.
    """

    def __init__(self) -> None:
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
            return  # not a line number; the line's own problem names it
        first = self._index().setdefault(number, index)
        if first != index:
            self.duplicates.append(duplicate_line_no_problem(index, first))

    def valid(self, start: int, lines: list[DraftLine]) -> None:
        numbers = [line.line_no for line in lines]
        rising = self._rising  # (line numbers have no upper bound; the array holds 64 bits)
        rising_still = rising is not None and (not rising or rising[-1] < numbers[0])
        if rising_still and all(map(int.__lt__, numbers, numbers[1:])) and numbers[-1] < 2**63:
            rising.extend(numbers)  # the common case: above every number so far, so none repeats
        elif len(set(numbers)) == len(numbers) and self._index().keys().isdisjoint(numbers):
            self._first_index.update(zip(numbers, range(start, start + len(numbers))))
        else:
            for offset, number in enumerate(numbers):
                self._number(start + offset, number)

    def invalid(self, start: int, numbers: list[Any]) -> None:
        """The raw numbers of a batch with an invalid line (cold path)."""
        self._index()  # from here on lines and numbers need not pair up
        for offset, number in enumerate(numbers):
            self._number(start + offset, number)


def _ordered_problems(envelope: Problems, lines_value: Problems, lines: Problems, duplicates: Problems) -> Problems:
    """The order pydantic reports a whole ``DraftOrder`` in: fields in model order, ``lines``
    between ``header`` and ``source_document``; duplicate numbers in place when every line is
    valid, after everything else when some line is not (a rule over valid lines only)."""
    after = [p for p in envelope if p[0].startswith("source_document")]
    before = [p for p in envelope if not p[0].startswith("source_document")]
    if lines:
        known = set(before + lines + after)
        return before + lines + after + [p for p in duplicates if p not in known]
    return before + lines_value + duplicates + after


class _Writer:
    """The caller's ``write``, remembering whether anything went out."""

    def __init__(self, write: Callable[[bytes], object] | None) -> None:
        self.write = write
        self.used = False

    def __call__(self, chunk: bytes) -> None:
        assert self.write is not None
        self.used = True
        self.write(chunk)


def _run(source: _Source, write: _Writer, batch_lines: int, keep: list[DraftLine] | None) -> DraftHead:
    envelope, envelope_problems = source.envelope()
    draft = None
    if envelope is not None:
        values = {name: getattr(envelope, name) for name in _ENVELOPE_MODEL.model_fields}
        draft = DraftOrder.model_construct(**values, lines=[])
    writing = write.write is not None and draft is not None
    tail = b""
    if writing:
        assert draft is not None
        head, tail = export_head_and_tail(draft)
        write(head)

    value = source.top.get("lines", _MISSING)
    items, value_problems = [], [("lines", "is required")]
    if value is not _MISSING:
        items, value_problems = source.items(value) or [], []
        if not items:
            value_problems = source.lines_value_problems(value)
    numbers = _LineNumbers()
    line_problems: Problems = []
    count = len(items)
    for start in range(0, count, batch_lines):
        batch = items[start : start + batch_lines]
        lines, problems = source.lines(start, batch)
        if lines is None:
            line_problems += problems
            numbers.invalid(start, [source.line_no(item) for item in batch])
        else:
            numbers.valid(start, lines)
            if keep is not None:
                keep += lines
        writing = writing and lines is not None and not numbers.duplicates
        if writing:
            assert lines is not None
            write(render_lines_chunk(lines, first=start == 0))
    del items
    problems = _ordered_problems(envelope_problems, value_problems, line_problems, numbers.duplicates)
    if problems:
        raise invalid_draft(problems)
    assert draft is not None
    if write.write is not None:
        write(tail)
    if keep is not None:
        draft = DraftOrder.model_construct(**values, lines=keep)
    return DraftHead(draft=draft, line_count=count)


def stream_validated_export(
    data: dict[str, Any] | Buffer | str,
    write: Callable[[bytes], object] | None = None,
    *,
    batch_lines: int = LINE_BATCH,
    keep_lines: bool = False,
) -> DraftHead:
    """Validate a draft (decoded JSON, or its JSON bytes or text) and, if ``write`` is given,
    render its export file into it.

    ``write`` receives ``render_export``'s bytes in order, in pieces. It stops
    being called at the first problem; validation goes on so that the
    ``InvalidDraftError`` names every offending field. After an error the
    caller discards whatever was written. ``keep_lines`` keeps the validated
    lines in ``draft.lines`` (``validate_draft``).
    """
    if batch_lines < 1:
        raise ValueError("batch_lines must be at least 1")
    keep: list[DraftLine] | None = [] if keep_lines else None
    writer = _Writer(write)
    if isinstance(data, dict):
        return _run(_Source(data, as_json=False), writer, batch_lines, keep)
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError:  # a lone surrogate: text no file can hold
            raise document_problem("must be valid Unicode text") from None
    if not isinstance(data, Buffer):
        raise document_problem("must be a JSON object")
    try:
        return _run(_split(data), writer, batch_lines, keep)
    except _NotJson:
        pass
    # Cold path: a small buffer that is not JSON both parsers read alike.
    try:
        decoded = pydantic_core.from_json(bytes(data))
    except ValueError as exc:
        raise document_problem(invalid_json(str(exc))) from None
    if not isinstance(decoded, dict):
        raise document_problem("must be a JSON object")
    if writer.used:  # pragma: no cover - jiter refused a span, but not the document holding it
        raise document_problem(invalid_json("unparseable"))
    return _run(_Source(decoded, as_json=False), writer, batch_lines, [] if keep_lines else None)


def validate_draft(data: dict[str, Any] | Buffer | str) -> DraftOrder:
    """Validate an approved draft; raise ``InvalidDraftError`` naming every bad field.

    ``bytes``/``str`` (and other buffers) are JSON; a ``dict`` is taken as
    already-decoded JSON.
    """
    # One batch: the models are all kept anyway, so small batches would save no
    # memory, only cost a call each.
    return stream_validated_export(data, batch_lines=sys.maxsize, keep_lines=True).draft
