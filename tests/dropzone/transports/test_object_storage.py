"""ObjectStore against a real SeaweedFS (weed mini) with credentials enforced."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
import uuid
from collections.abc import Iterator

import pytest

from dropzone import errors
from dropzone.transports.object_storage import (
    MULTIPART_THRESHOLD,
    ObjectInfo,
    ObjectStore,
)
from tests.dropzone.transports._util import body_of, chunked, sha
from tests.fixtures.servers import free_port


@pytest.fixture(scope="module")
def store(seaweedfs) -> Iterator[ObjectStore]:
    s = ObjectStore(seaweedfs.endpoint_url, seaweedfs.bucket, seaweedfs.access_key, seaweedfs.secret_key)
    s.ensure_bucket()  # exists already: a no-op
    yield s
    s.close()


def key(name: str = "order.json") -> str:
    return f"exports/{uuid.uuid4()}/{name}"


def test_round_trip_with_sha256_metadata(store):
    data = b'{"export_version": "orderflow_export_json_v1"}'
    k = key()
    assert store.head(k) is None
    store.put(k, data, sha256=sha(data), size=len(data), content_type="application/json")
    assert store.head(k) == ObjectInfo(size=len(data), sha256=sha(data))
    assert b"".join(store.iter_chunks(k, chunk_size=7)) == data
    assert store.get_bytes(k, max_bytes=1000) == data
    assert store.get_bytes(k, max_bytes=5) == data[:6]  # max_bytes + 1: "too big" is detectable
    store.put(k, iter([data[:10], data[10:]]), sha256=sha(data), size=len(data))  # same bytes again: fine


def test_empty_object(store):
    k = key()
    store.put(k, b"", sha256=sha(b""), size=0)
    assert store.head(k) == ObjectInfo(size=0, sha256=sha(b""))
    assert b"".join(store.iter_chunks(k)) == b""
    assert store.get_bytes(k, max_bytes=10) == b""


def test_multipart_streamed_40mb(store):
    size = 40 * 1024 * 1024
    assert size > MULTIPART_THRESHOLD
    digest = sha(body_of(size))
    k = key("big.json")

    def source() -> Iterator[bytes]:
        # Generated on the fly: the put must not need the whole body at once.
        yield from chunked(body_of(size), 1024 * 1024)

    tracemalloc.start()
    try:
        store.put(k, source(), sha256=digest, size=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    info = store.head(k)
    assert info == ObjectInfo(size=size, sha256=digest)
    h = hashlib.sha256()
    n = 0
    for block in store.iter_chunks(k):
        assert len(block) <= 1024 * 1024
        h.update(block)
        n += len(block)
    assert (n, h.hexdigest()) == (size, digest)
    # The generator itself holds 40 MiB twice (body_of); the upload adds about one part.
    assert peak < 2 * size + 3 * 16 * 1024 * 1024, peak


def test_wrong_sha_stores_nothing(store):
    data = body_of(1000)
    k = key()
    with pytest.raises(errors.IntegrityError):
        store.put(k, data, sha256=sha(b"other"), size=len(data))
    assert store.head(k) is None
    with pytest.raises(errors.IntegrityError):
        store.put(k, data, sha256=sha(data), size=len(data) + 1)
    with pytest.raises(errors.IntegrityError):
        store.put(k, data, sha256=sha(data), size=len(data) - 1)
    assert store.head(k) is None


def test_wrong_sha_multipart_is_aborted(store, seaweedfs):
    size = MULTIPART_THRESHOLD + 5 * 1024 * 1024
    data = body_of(size)
    k = key("big-bad.json")
    with pytest.raises(errors.IntegrityError):
        store.put(k, chunked(data, 1 << 20), sha256=sha(b"not it"), size=size)
    assert store.head(k) is None
    uploads = store._client.list_multipart_uploads(Bucket=seaweedfs.bucket, Prefix=k).get("Uploads", [])
    assert uploads == []
    with pytest.raises(errors.IntegrityError):
        store.put(k, chunked(data, 1 << 20), sha256=sha(data), size=size - 1)  # source too long
    assert store.head(k) is None


def test_draft_refs_live_under_drafts(store):
    k = f"drafts/{uuid.uuid4()}/{uuid.uuid4()}/0123456789abcdef.json"
    store.put(k, b"{}", sha256=sha(b"{}"), size=2)
    assert store.get_bytes(k, max_bytes=100) == b"{}"


def test_missing_object(store):
    k = key()
    with pytest.raises(errors.ExportNotFoundError):
        list(store.iter_chunks(k))
    with pytest.raises(errors.ExportNotFoundError):
        store.get_bytes(k, max_bytes=10)


@pytest.mark.parametrize(
    "bad",
    ["other/x.json", "exports/", "drafts/", "exports/../secret", "exports/a\x00b", "exports/a\nb", "/exports/x", "exports//x"],
)
def test_invalid_keys(store, bad):
    with pytest.raises(errors.InvalidConfigError):
        store.put(bad, b"x", sha256=sha(b"x"), size=1)
    with pytest.raises(errors.InvalidConfigError):
        store.head(bad)


def test_wrong_credentials_are_permanent_and_secret_free(seaweedfs):
    wrong_secret = "wrong-secret-" + uuid.uuid4().hex
    s = ObjectStore(seaweedfs.endpoint_url, seaweedfs.bucket, seaweedfs.access_key, wrong_secret)
    with pytest.raises(errors.AuthenticationError) as info:
        s.put(key(), b"x", sha256=sha(b"x"), size=1)
    assert "access denied" in str(info.value) and seaweedfs.endpoint_url in str(info.value)
    assert wrong_secret not in str(info.value) and wrong_secret not in repr(s)
    s2 = ObjectStore(seaweedfs.endpoint_url, seaweedfs.bucket, "nosuchkey", wrong_secret)
    with pytest.raises(errors.AuthenticationError):
        s2.head(key())


def test_missing_bucket_is_a_config_error(seaweedfs):
    s = ObjectStore(seaweedfs.endpoint_url, "no-such-bucket-" + uuid.uuid4().hex[:8], seaweedfs.access_key, seaweedfs.secret_key)
    with pytest.raises(errors.InvalidConfigError, match="does not exist"):
        s.put(key(), b"x", sha256=sha(b"x"), size=1)


def test_ensure_bucket_creates(seaweedfs):
    name = "dz-new-" + uuid.uuid4().hex[:8]
    s = ObjectStore(seaweedfs.endpoint_url, name, seaweedfs.access_key, seaweedfs.secret_key)
    s.ensure_bucket()
    s.ensure_bucket()
    k = key()
    s.put(k, b"x", sha256=sha(b"x"), size=1)
    assert s.head(k) is not None


def test_endpoint_down_is_transient():
    s = ObjectStore(f"http://127.0.0.1:{free_port()}", "bucket", "ak", "sk", max_attempts=2, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(errors.StorageUnavailableError) as info:
        s.head(key())
    assert info.value.retryable
    assert time.monotonic() - started < 10
    with pytest.raises(errors.StorageUnavailableError):
        s.put(key(), b"x", sha256=sha(b"x"), size=1)
    with pytest.raises(errors.StorageUnavailableError):
        list(s.iter_chunks(key()))


def test_store_stopped_and_restarted(seaweedfs, store):
    k = key()
    store.put(k, b"kept", sha256=sha(b"kept"), size=4)
    seaweedfs.stop()
    try:
        with pytest.raises(errors.StorageUnavailableError):
            store.head(k)
    finally:
        seaweedfs.start()
    # The S3 port answers before the volume server has re-registered: reads fail
    # as transient (StorageUnavailableError, which Temporal retries) for a moment.
    deadline = time.monotonic() + 60
    while True:
        try:
            body = store.get_bytes(k, max_bytes=10)
            break
        except errors.StorageUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert body == b"kept"  # data survived the restart
