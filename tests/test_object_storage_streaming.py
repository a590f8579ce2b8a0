"""ObjectStore's one upload path against real SeaweedFS: one streamed PUT, verified before its end.

Every body goes up in one PUT whose last bytes are held back until the source
has hashed to the expected sha256 at the expected size: exactly the bytes are
stored, or nothing, with a chunk or two in memory.
"""

from __future__ import annotations

import os
import tracemalloc
import uuid
from collections.abc import Iterator

import pytest

from dropzone import errors
from dropzone.object_store import ObjectInfo, ObjectStore
from dropzone.object_store.streams import VerifiedStream
from tests.helpers import sha256_of

MiB = 1024 * 1024
SIZE = 23 * MiB + 123  # not a whole number of chunks


def chunked(data: bytes, n: int = MiB) -> Iterator[bytes]:
    for start in range(0, len(data), n):
        yield data[start : start + n]


def new_key() -> str:
    return f"exports/{uuid.uuid4()}/streamed.json"


@pytest.fixture(scope="module")
def body() -> bytes:
    return os.urandom(SIZE)


def stored_bytes(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.iter_chunks(key))


def test_streamed_put_stores_the_bytes_with_bounded_memory(object_store: ObjectStore, body: bytes) -> None:
    key = new_key()
    tracemalloc.start()
    try:
        object_store.put(key, chunked(body), sha256=sha256_of(body), size=len(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert object_store.head(key) == ObjectInfo(size=len(body), sha256=sha256_of(body))
    assert stored_bytes(object_store, key) == body
    assert peak < 8 * MiB, peak  # a chunk or two in flight, never the body


@pytest.mark.parametrize(
    ("make_source", "claimed_sha", "claimed_size", "reason"),
    [
        (lambda b: chunked(b), "other", SIZE, "differs from expected"),
        (lambda b: chunked(b + b"x"), "right", SIZE, "more than"),
        (lambda b: chunked(b[:-1]), "right", SIZE, f"expected {SIZE}"),
        (lambda b: iter([b, b"", b"!"]), "right", SIZE, "more than"),
    ],
    ids=["wrong-sha", "too-long", "too-short", "extra-after-the-end"],
)
def test_streamed_put_stores_nothing_unless_verified(
    object_store: ObjectStore, body: bytes, make_source, claimed_sha: str, claimed_size: int, reason: str  # type: ignore[no-untyped-def]
) -> None:
    key = new_key()
    expected = sha256_of(body) if claimed_sha == "right" else sha256_of(b"other")
    with pytest.raises(errors.IntegrityError) as info:
        object_store.put(key, make_source(body), sha256=expected, size=claimed_size)
    # Our own check aborted the request (not the store's checksum), so this holds on
    # stores that ignore x-amz-checksum-sha256 too.
    assert reason in info.value.message
    assert object_store.head(key) is None


def test_put_copies_mutable_chunks(object_store: ObjectStore, body: bytes) -> None:
    # A source that reuses one buffer must not change bytes already handed over.
    def reused_buffer() -> Iterator[bytearray]:
        buffer = bytearray(MiB)
        for start in range(0, len(body), MiB):
            piece = body[start : start + MiB]
            buffer[: len(piece)] = piece
            yield buffer if len(piece) == MiB else bytearray(piece)

    key = new_key()
    object_store.put(key, reused_buffer(), sha256=sha256_of(body), size=len(body))
    assert stored_bytes(object_store, key) == body


def test_a_one_chunk_body_is_verified_before_the_request_and_a_longer_one_streams_on(body: bytes) -> None:
    small = body[:1000]
    assert VerifiedStream([small], size=len(small), sha256=sha256_of(small), label="x").whole() == small
    with pytest.raises(errors.IntegrityError, match="differs from expected"):
        VerifiedStream([small], size=len(small), sha256=sha256_of(b"other"), label="x").whole()
    stream = VerifiedStream(chunked(body), size=len(body), sha256=sha256_of(body), label="x")
    assert stream.whole() is None  # more than one chunk: read on from the first
    assert b"".join(iter(lambda: stream.read(64 * 1024), b"")) == body
