"""A validated draft → the exact bytes of its ``orderflow_export_json_v1`` file, whole or in pieces.

The layout (docs/export_format.md, "The file") is pydantic-core's JSON with a
2-space indent. The serialisation is done in Rust; Python code only runs once
per draft or once per chunk of lines, never per field, because rendering
300,000-line drafts has to stay fast.

Rendering in pieces: the document is rendered once without its lines and split
where the lines array goes (``export_head_and_tail``); each run of lines is
rendered as a list and re-indented one level (``render_lines_chunk``). Raw
newlines in pydantic's JSON only ever come from the indent (newlines inside
strings are escaped as ``\\n``), so shifting them is safe, and the pieces joined
are ``render_export``'s bytes (tests/dropzone/test_export_v1.py proves it).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import TypeAdapter

from dropzone.export_v1.models import EXPORT_FORMAT_VERSION, DraftLine, DraftOrder, ExportMeta, ExportV1

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
    """The exact bytes of the export file."""
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
    """``render_export``'s bytes in pieces of at most ``chunk_lines`` order lines."""
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be at least 1")
    head, tail = export_head_and_tail(draft)
    yield head
    lines = draft.lines
    for start in range(0, len(lines), chunk_lines):
        yield render_lines_chunk(lines[start : start + chunk_lines], first=start == 0)
    yield tail
