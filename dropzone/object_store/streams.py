"""The request body of every upload: the caller's chunks, released only once verified."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from typing import Any, NoReturn

from dropzone import errors


class VerifiedStream(io.RawIOBase):
    """A request body read from chunks that hands out its last bytes only once verified.

    Hashes and counts as it reads; more than ``size`` bytes, fewer, or another
    sha256 raise ``IntegrityError`` from ``read`` (kept in ``error``, since the
    HTTP stack may wrap it) before the final bytes leave, so the request dies
    incomplete and the store keeps nothing, whatever store it is. Holds one
    chunk at a time. Not seekable: botocore cannot resend it, and a failed
    request surfaces as a transient error that the caller retries.
    """

    def __init__(self, chunks: Iterable[bytes], *, size: int, sha256: str, label: str) -> None:
        self._chunks = iter(chunks)
        self._size = size
        self._sha256 = sha256
        self._label = label
        self._hash = hashlib.sha256()
        self._seen = 0
        self._buffer = memoryview(b"")
        self.error: errors.IntegrityError | None = None
        if size == 0:
            # Nothing will be read for an empty body: the source is checked now.
            self._verify_end()

    def whole(self) -> bytes | None:
        """The whole body, verified, if the source's first chunk holds all of it; else None.

        A small body (one chunk: most exports) then goes up as bytes: one send,
        and botocore can resend it. A larger one streams on from where this left it.
        """
        if self._seen == 0 and self._size > 0:
            self._next_chunk()
        if self._seen != self._size:
            return None
        block, self._buffer = bytes(self._buffer), memoryview(b"")
        return block

    def readable(self) -> bool:
        return True

    def _fail(self, message: str) -> NoReturn:
        self.error = errors.IntegrityError(f"{self._label}: {message}")
        raise self.error

    def _next_chunk(self) -> bool:
        for chunk in self._chunks:
            if not chunk:
                continue
            if not isinstance(chunk, bytes):
                chunk = bytes(chunk)  # a view of a mutable buffer could change under the upload
            self._seen += len(chunk)
            if self._seen > self._size:
                self._fail(f"source yielded more than {self._size} bytes")
            self._hash.update(chunk)
            if self._seen == self._size:
                self._verify_end()
            self._buffer = memoryview(chunk)
            return True
        if self._seen != self._size:
            self._fail(f"got {self._seen} bytes, expected {self._size}")
        return False

    def _verify_end(self) -> None:
        # All bytes are in hand but the last ones not yet sent: the source must be
        # finished and the hash right, or the request dies incomplete.
        for extra in self._chunks:
            if extra:
                self._fail(f"source yielded more than {self._size} bytes")
        digest = self._hash.hexdigest()
        if digest != self._sha256:
            self._fail(f"sha256 {digest} differs from expected {self._sha256}")

    def read(self, size: int | None = -1) -> bytes:
        if not self._buffer and not self._next_chunk():
            return b""
        n = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
        block, self._buffer = self._buffer[:n], self._buffer[n:]
        return bytes(block)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
