"""ObjectStore's fast paths against real SeaweedFS: one streamed PUT, and pipelined multipart.

Large bodies go up in one PUT whose last bytes are held back until the source
has hashed to the expected sha256; the multipart path (above
``single_put_limit``) uploads several parts at once from views of the
caller's chunks. Both must store exactly the bytes or nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
import uuid
from collections.abc import Iterator

import pytest

from dropzone import errors
from dropzone.transports.object_storage import MULTIPART_THRESHOLD, ObjectInfo, ObjectStore, _PiecesReader

MiB = 1024 * 1024
SIZE = MULTIPART_THRESHOLD + 7 * MiB + 123  # streamed path; not a whole number of chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunked(data: bytes, n: int = MiB) -> Iterator[bytes]:
    for start in range(0, len(data), n):
        yield data[start : start + n]


def new_key() -> str:
    return f"exports/{uuid.uuid4()}/streamed.json"


@pytest.fixture(scope="module")
def body() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def multipart_store(seaweedfs) -> Iterator[ObjectStore]:  # type: ignore[no-untyped-def]
    # A low single-PUT limit sends these sizes through the multipart path.
    store = ObjectStore(
        seaweedfs.endpoint_url, seaweedfs.bucket, seaweedfs.access_key, seaweedfs.secret_key,
        region=seaweedfs.region, single_put_limit=MULTIPART_THRESHOLD,
    )
    yield store
    store.close()


def stored_bytes(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.iter_chunks(key))


def test_streamed_put_stores_the_bytes_with_bounded_memory(object_store: ObjectStore, body: bytes) -> None:
    key = new_key()
    tracemalloc.start()
    try:
        object_store.put(key, chunked(body), sha256=sha(body), size=len(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert object_store.head(key) == ObjectInfo(size=len(body), sha256=sha(body))
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
    expected = sha(body) if claimed_sha == "right" else sha(b"other")
    with pytest.raises(errors.IntegrityError) as info:
        object_store.put(key, make_source(body), sha256=expected, size=claimed_size)
    # Our own check aborted the request (not the store's checksum), so this holds on
    # stores that ignore x-amz-checksum-sha256 too.
    assert reason in info.value.message
    assert object_store.head(key) is None


def test_multipart_path_pipelines_parts_and_verifies(multipart_store: ObjectStore, body: bytes) -> None:
    key = new_key()
    # Odd chunk sizes: parts are cut through the middle of chunks.
    multipart_store.put(key, chunked(body, 3 * MiB + 17), sha256=sha(body), size=len(body))
    assert multipart_store.head(key) == ObjectInfo(size=len(body), sha256=sha(body))
    assert stored_bytes(multipart_store, key) == body

    bad = new_key()
    with pytest.raises(errors.IntegrityError):
        multipart_store.put(bad, chunked(body), sha256=sha(b"nope"), size=len(body))
    assert multipart_store.head(bad) is None
    uploads = multipart_store._client.list_multipart_uploads(Bucket=multipart_store.bucket, Prefix=bad)
    assert uploads.get("Uploads", []) == []


def test_multipart_path_copies_mutable_chunks(multipart_store: ObjectStore, body: bytes) -> None:
    # A source that reuses one buffer must not change bytes already handed over.
    def reused_buffer() -> Iterator[bytearray]:
        buffer = bytearray(MiB)
        for start in range(0, len(body), MiB):
            piece = body[start : start + MiB]
            buffer[: len(piece)] = piece
            yield buffer if len(piece) == MiB else bytearray(piece)

    key = new_key()
    multipart_store.put(key, reused_buffer(), sha256=sha(body), size=len(body))
    assert stored_bytes(multipart_store, key) == body


def test_pieces_reader_reads_and_seeks_across_pieces() -> None:
    data = os.urandom(100_000)
    view = memoryview(data)
    reader = _PiecesReader([view[i : i + 7777] for i in range(0, len(data), 7777)])
    assert len(reader) == len(data)
    out = b""
    while block := reader.read(3000):
        out += block
    assert out == data
    reader.seek(12_345)
    assert reader.read(10) == data[12_345:12_355] and reader.tell() == 12_355
    reader.seek(-5, io.SEEK_END)
    assert reader.read() == data[-5:]
    reader.seek(0)
    buffer = bytearray(100)
    assert reader.readinto(buffer) == 100 and bytes(buffer) == data[:100]
