"""Drafts that arrive as files or streams: the size limit first, then the one streaming pipeline.

The doors in front of the worker (``dropzone export FILE``, ``start_export``,
the HTTP API's push) take drafts of any size up to ``MAX_DRAFT_BYTES`` without
ever holding them as models, and without a second validator: a file is
memory-mapped and handed to ``stream_validated_export`` (dropzone/export_v1/pipeline.py),
the very function the worker runs on every draft, so the door and the worker
accept the same drafts and name the same problems in the same words. Its
sha256 is computed in a second thread meanwhile (hashlib releases the GIL).

A stream is first spooled to a private temporary file (counted against the
limit as it arrives, removed afterwards), then treated as a file. Nothing in
here writes anywhere else: a draft that fails leaves nothing behind.

No Temporal imports: this is domain code.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import stat
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dropzone.errors import InvalidDraftError
from dropzone.export_v1 import DOCUMENT, Buffer, DraftOrder, invalid_draft, stream_validated_export

# The largest draft any door takes, and the worker's limit for a ``draft_ref``
# (activities/exports.py): a larger one could never be exported.
MAX_DRAFT_BYTES = 512 * 1024 * 1024
READ_CHUNK = 1024 * 1024
FILE_FIELD = "(file)"


@dataclass(frozen=True)
class CheckedDraft:
    """A draft that passed validation: its header (``draft.lines`` is empty), size and sha256."""

    draft: DraftOrder
    line_count: int
    size: int
    sha256: str


def too_large(limit: int, size: int | None = None) -> InvalidDraftError:
    found = f"is {size:,} bytes, more" if size is not None else "is more"
    return invalid_draft([(DOCUMENT, f"{found} than the limit of {limit:,} bytes")])


def unreadable(path: os.PathLike[str] | str, exc: OSError) -> InvalidDraftError:
    return InvalidDraftError(f"cannot read draft file {path}: {exc.strerror or exc}", fields=[FILE_FIELD])


def check_buffer(data: Buffer) -> CheckedDraft:
    """Validate a draft's JSON by streaming while its sha256 is computed in a second thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="draft-sha256") as pool:
        digest = pool.submit(lambda: hashlib.sha256(data).hexdigest())
        try:
            head = stream_validated_export(data)
        except InvalidDraftError as exc:
            error = exc
        else:
            error = None
    if error is not None:
        # Without its traceback: the frames hold raw spans of ``data``, which would
        # keep a memory-mapped draft from being closed.
        raise error.with_traceback(None)
    with memoryview(data) as view:
        size = view.nbytes
    return CheckedDraft(head.draft, head.line_count, size, digest.result())


def file_size(path: os.PathLike[str] | str, *, max_bytes: int = MAX_DRAFT_BYTES) -> int:
    """The size of a regular file within the limit; nothing is read."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise unreadable(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidDraftError(f"cannot read draft file {path}: not a regular file", fields=[FILE_FIELD])
    if st.st_size > max_bytes:
        raise too_large(max_bytes, st.st_size)
    return st.st_size


def read_small(path: os.PathLike[str] | str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None


def open_file_size(stream: BinaryIO) -> int | None:
    """The size of a stream that is a regular file read from its start (a temporary
    file an HTTP server spooled a body to, say), else None: such a file is mapped
    as it is, with no second copy."""
    try:
        st = os.fstat(stream.fileno())
        at_start = stream.tell() == 0
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) and at_start else None


@contextlib.contextmanager
def _mapped(handle: BinaryIO) -> Iterator[Buffer]:
    """The open file's bytes, memory-mapped read-only (the page cache's copy, not one of our own)."""
    if os.fstat(handle.fileno()).st_size == 0:
        yield b""  # an empty file cannot be mapped; it is an invalid draft all the same
        return
    view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield view
    finally:
        with contextlib.suppress(BufferError):  # a span still alive: the GC unmaps it later
            view.close()


def check_open_file(handle: BinaryIO, *, max_bytes: int = MAX_DRAFT_BYTES) -> CheckedDraft:
    """Validate an open regular file of any size up to ``max_bytes`` (checked before reading)."""
    size = os.fstat(handle.fileno()).st_size
    if size > max_bytes:
        raise too_large(max_bytes, size)
    with _mapped(handle) as data:
        return check_buffer(data)


def check_file(path: os.PathLike[str] | str, *, max_bytes: int = MAX_DRAFT_BYTES) -> CheckedDraft:
    """Validate a draft file of any size up to ``max_bytes`` (checked before reading)."""
    file_size(path, max_bytes=max_bytes)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise unreadable(path, exc) from None
    with handle:
        return check_open_file(handle, max_bytes=max_bytes)


def iter_open_file(handle: BinaryIO) -> Iterator[bytes]:
    """The whole file in ``READ_CHUNK`` pieces (for a streamed upload), from its start."""
    handle.seek(0)
    while chunk := handle.read(READ_CHUNK):
        yield chunk


def iter_file(path: os.PathLike[str] | str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as handle:
            yield from iter_open_file(handle)
    except OSError as exc:
        raise unreadable(path, exc) from None


@contextlib.contextmanager
def spooled(stream: BinaryIO, *, max_bytes: int = MAX_DRAFT_BYTES, first: bytes = b"") -> Iterator[Path]:
    """A binary stream's bytes (after ``first``) in a private temporary file, removed on exit.

    Stops reading as soon as the limit is passed, so a 2 GB upload costs at
    most ``max_bytes`` of disk for a moment, and never memory.
    """
    fd, name = tempfile.mkstemp(prefix="dropzone-draft-", suffix=".json")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            size = len(first)
            if size > max_bytes:
                raise too_large(max_bytes)
            out.write(first)
            while chunk := stream.read(READ_CHUNK):
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise invalid_draft([(DOCUMENT, "must be a binary stream of JSON bytes")])
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                out.write(chunk)
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
