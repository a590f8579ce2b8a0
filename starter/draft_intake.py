"""From a draft in whatever form a backend has it to the ``ExportRequest`` that starts its export.

Both go through the one draft pipeline the worker runs (dropzone/export_v1/pipeline.py):

* Up to the inline limit (256 KiB by default): validated by ``validate_draft``
  (its lines kept as models) and carried in the workflow input.
* Larger, up to ``max_draft_bytes``: validated by streaming (dropzone/draft_files.py,
  the sha256 alongside), then uploaded to object storage from the
  file (or the caller's bytes) in 1 MiB pieces, and carried as ``draft_ref``.
  The draft is never parsed into models nor held in several copies: a file is
  memory-mapped, a stream is spooled to a temporary file first.

Nothing is written before the draft has passed validation and ``check``.
Blocking (file I/O, CPU, boto3): ``start_export`` runs it in a thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Union
from uuid import UUID

from dropzone.contracts import ExportRequest
from dropzone.draft_files import (
    MAX_DRAFT_BYTES,
    READ_CHUNK,
    CheckedDraft,
    check_buffer,
    check_file,
    check_open_file,
    file_size,
    iter_file,
    iter_open_file,
    open_file_size,
    read_small,
    spooled,
    too_large,
)
from dropzone.export_v1 import DOCUMENT, DraftOrder, invalid_draft, validate_draft
from dropzone.object_store import ObjectStore

# What start_export takes: decoded JSON, its bytes (or text), a file path, or a binary stream.
DraftInput = Union[dict[str, Any], bytes, bytearray, memoryview, str, "os.PathLike[str]", BinaryIO]
DraftCheck = Callable[[DraftOrder], None]


@dataclass(frozen=True)
class PreparedDraft:
    request: ExportRequest
    draft: DraftOrder  # header fields; ``lines`` is empty when the draft went by reference
    line_count: int


def draft_ref_key(draft: DraftOrder, sha256: str) -> str:
    """Content-addressed: the same draft started twice is stored once."""
    return f"drafts/{draft.org_id}/{draft.draft_order_id}/{sha256[:16]}.json"


def prepare_draft(
    erp_connection_id: UUID,
    draft: DraftInput,
    *,
    store: ObjectStore | None,
    inline_limit_bytes: int,
    max_draft_bytes: int = MAX_DRAFT_BYTES,
    check: DraftCheck | None = None,
) -> PreparedDraft:
    """Validate ``draft``, run ``check`` on it, store it if it is large; the request to start.

    Raises ``InvalidDraftError`` (naming every bad field, or the size limit, or
    the unreadable file) before anything is written.
    """
    intake = _Intake(erp_connection_id, store, inline_limit_bytes, max_draft_bytes, check)
    if isinstance(draft, dict):
        body = json.dumps(draft, separators=(",", ":")).encode()
        if len(body) <= inline_limit_bytes:
            return intake.inline(validate_draft(draft), dict(draft))
        return intake.from_bytes(body)
    if isinstance(draft, str):
        return intake.from_bytes(draft.encode())
    if isinstance(draft, (bytes, bytearray, memoryview)):
        return intake.from_bytes(draft)
    if isinstance(draft, os.PathLike):
        return intake.from_file(Path(draft))
    if callable(getattr(draft, "read", None)):
        return intake.from_stream(draft)
    raise invalid_draft([(DOCUMENT, "must be a JSON object, its bytes, a file path or a binary stream")])


@dataclass(frozen=True)
class _Intake:
    erp_connection_id: UUID
    store: ObjectStore | None
    inline_limit: int
    max_bytes: int
    check: DraftCheck | None

    def inline(self, parsed: DraftOrder, draft_json: dict[str, Any]) -> PreparedDraft:
        if self.check is not None:
            self.check(parsed)
        request = ExportRequest(erp_connection_id=self.erp_connection_id, draft=draft_json)
        return PreparedDraft(request, parsed, len(parsed.lines))

    def from_bytes(self, body: bytes | bytearray | memoryview) -> PreparedDraft:
        size = memoryview(body).nbytes
        if size > self.max_bytes:
            raise too_large(self.max_bytes, size)
        if size <= self.inline_limit:
            data = bytes(body)
            return self.inline(validate_draft(data), json.loads(data))
        store = self.require_store()
        checked = check_buffer(body)
        return self.by_reference(store, checked, lambda: _slices(body))

    def from_file(self, path: Path) -> PreparedDraft:
        if file_size(path, max_bytes=self.max_bytes) <= self.inline_limit:
            return self.from_bytes(read_small(path))
        store = self.require_store()
        checked = check_file(path, max_bytes=self.max_bytes)
        return self.by_reference(store, checked, lambda: iter_file(path))

    def from_stream(self, stream: BinaryIO) -> PreparedDraft:
        size = open_file_size(stream)
        if size is not None and size > self.inline_limit:  # a file already: mapped, not copied
            if size > self.max_bytes:
                raise too_large(self.max_bytes, size)
            store = self.require_store()
            checked = check_open_file(stream, max_bytes=self.max_bytes)
            return self.by_reference(store, checked, lambda: iter_open_file(stream))
        first = stream.read(self.inline_limit + 1)
        if not isinstance(first, (bytes, bytearray)):
            raise invalid_draft([(DOCUMENT, "must be a binary stream of JSON bytes")])
        if len(first) <= self.inline_limit:
            return self.from_bytes(first)
        with spooled(stream, max_bytes=self.max_bytes, first=bytes(first)) as path:
            del first
            return self.from_file(path)

    def require_store(self) -> ObjectStore:
        if self.store is None:
            raise ValueError("draft is too large to travel inline: pass an ObjectStore to start_export")
        return self.store

    def by_reference(
        self, store: ObjectStore, checked: CheckedDraft, chunks: Callable[[], Iterator[bytes]]
    ) -> PreparedDraft:
        if self.check is not None:
            self.check(checked.draft)
        key = draft_ref_key(checked.draft, checked.sha256)
        existing = store.head(key)
        if existing is None or existing.size != checked.size or existing.sha256 != checked.sha256:
            # The store checks size and sha256 as the bytes go: a file changed since its
            # validation fails the upload, and no object appears.
            store.put(key, chunks(), sha256=checked.sha256, size=checked.size, content_type="application/json")
        request = ExportRequest(erp_connection_id=self.erp_connection_id, draft_ref=key)
        return PreparedDraft(request, checked.draft, checked.line_count)


def _slices(body: bytes | bytearray | memoryview) -> Iterator[bytes]:
    with memoryview(body) as view:
        for start in range(0, view.nbytes, READ_CHUNK):
            yield bytes(view[start : start + READ_CHUNK])
