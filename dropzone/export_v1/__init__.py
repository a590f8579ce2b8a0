"""The approved draft order and the ``orderflow_export_json_v1`` file.

The format's rules (the file's layout, which drafts are valid, how problems
are worded) are written down in docs/export_format.md; changing any of them
changes files an ERP reads, or every file's sha256. The package, by concern:

* ``models``: the draft and the export document (pydantic; field order is key order);
* ``problems``: field paths and reasons, and the one ``InvalidDraftError``;
* ``spans``: JSON bytes split into raw spans without decoding them (msgspec);
* ``pipeline``: the one pipeline every draft goes through, whatever its size:
  ``validate_draft`` and ``stream_validated_export``;
* ``render``: a validated draft → the file's bytes, whole or in chunks.

No Temporal imports: this is domain code.
"""

from dropzone.export_v1.models import (
    EXPORT_FORMAT_VERSION,
    ISO_4217_CURRENCIES,
    DraftCustomer,
    DraftHeader,
    DraftLine,
    DraftOrder,
    ExportMeta,
    ExportV1,
    SourceDocument,
    model_without_lines,
)
from dropzone.export_v1.pipeline import (
    LINE_BATCH,
    DraftHead,
    check_lines,
    stream_validated_export,
    validate_draft,
)
from dropzone.export_v1.problems import (
    DOCUMENT,
    MAX_MESSAGE_PROBLEMS,
    MAX_REPORTED_FIELDS,
    Problems,
    duplicate_line_no_problem,
    field_path,
    invalid_draft,
    validation_problems,
)
from dropzone.export_v1.render import export_head_and_tail, iter_render_export, render_export, render_lines_chunk
from dropzone.export_v1.spans import Buffer, json_error_position, split_document, split_items

__all__ = [
    "DOCUMENT",
    "EXPORT_FORMAT_VERSION",
    "ISO_4217_CURRENCIES",
    "LINE_BATCH",
    "MAX_MESSAGE_PROBLEMS",
    "MAX_REPORTED_FIELDS",
    "Buffer",
    "DraftCustomer",
    "DraftHead",
    "DraftHeader",
    "DraftLine",
    "DraftOrder",
    "ExportMeta",
    "ExportV1",
    "Problems",
    "SourceDocument",
    "check_lines",
    "duplicate_line_no_problem",
    "export_head_and_tail",
    "field_path",
    "invalid_draft",
    "iter_render_export",
    "json_error_position",
    "model_without_lines",
    "render_export",
    "render_lines_chunk",
    "split_document",
    "split_items",
    "stream_validated_export",
    "validate_draft",
    "validation_problems",
]
