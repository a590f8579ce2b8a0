"""ObjectStore against a real SeaweedFS (weed mini) with credentials enforced, and its error table."""

from __future__ import annotations

import base64
import hashlib
import http.client
import inspect
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3.exceptions
import botocore.exceptions as bce
import pytest
import urllib3.exceptions

from dropzone import errors
from dropzone.object_store import MAX_OBJECT_BYTES, ObjectInfo, ObjectStore
from dropzone.object_store.errors import S3_ERROR_MAP, translate
from tests.helpers import eventually_sync, free_port, sha256_of

sha = sha256_of
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(seaweedfs) -> Iterator[ObjectStore]:  # type: ignore[no-untyped-def]
    s = ObjectStore(seaweedfs.endpoint_url, seaweedfs.bucket, seaweedfs.access_key, seaweedfs.secret_key)
    s.ensure_bucket()  # exists already: a no-op
    yield s
    s.close()


def key(name: str = "order.json") -> str:
    return f"exports/{uuid.uuid4()}/{name}"


def test_round_trip_with_sha256_metadata(store: ObjectStore) -> None:
    data = b'{"export_version": "orderflow_export_json_v1"}'
    k = key()
    assert store.head(k) is None
    store.put(k, data, sha256=sha(data), size=len(data), content_type="application/json")
    assert store.head(k) == ObjectInfo(size=len(data), sha256=sha(data))
    assert b"".join(store.iter_chunks(k, chunk_size=7)) == data
    assert store.get_buffer(k, max_bytes=1000) == data
    assert store.get_buffer(k, max_bytes=len(data) - 1) is None  # too big: told, not read
    store.put(k, iter([data[:10], data[10:]]), sha256=sha(data), size=len(data))  # same bytes again: fine
    assert store.get_buffer(k, max_bytes=len(data)) == data


def test_empty_object(store: ObjectStore) -> None:
    k = key()
    store.put(k, b"", sha256=sha(b""), size=0)
    assert store.head(k) == ObjectInfo(size=0, sha256=sha(b""))
    assert b"".join(store.iter_chunks(k)) == b""
    assert store.get_buffer(k, max_bytes=10) == b""


def test_empty_body_is_verified_too(store: ObjectStore) -> None:
    # Nothing is read for an empty body: the source and the hash are checked before the request.
    k = key()
    with pytest.raises(errors.IntegrityError, match="differs from expected"):
        store.put(k, b"", sha256=sha(b"other"), size=0)
    with pytest.raises(errors.IntegrityError, match="more than 0 bytes"):
        store.put(k, iter([b"", b"x"]), sha256=sha(b""), size=0)
    assert store.head(k) is None


def test_wrong_sha_or_size_stores_nothing(store: ObjectStore) -> None:
    data = b"x" * 1000
    k = key()
    with pytest.raises(errors.IntegrityError):
        store.put(k, data, sha256=sha(b"other"), size=len(data))
    assert store.head(k) is None
    with pytest.raises(errors.IntegrityError):
        store.put(k, data, sha256=sha(data), size=len(data) + 1)
    with pytest.raises(errors.IntegrityError):
        store.put(k, data, sha256=sha(data), size=len(data) - 1)
    assert store.head(k) is None


def test_failed_put_keeps_what_the_key_held(store: ObjectStore) -> None:
    k = key()
    store.put(k, b"first", sha256=sha(b"first"), size=5)
    with pytest.raises(errors.IntegrityError):
        store.put(k, iter([b"sec", b"ond"]), sha256=sha(b"other"), size=6)
    assert b"".join(store.iter_chunks(k)) == b"first"
    assert store.head(k) == ObjectInfo(size=5, sha256=sha(b"first"))


def test_the_store_rejects_bytes_that_miss_the_checksum_we_send(store: ObjectStore) -> None:
    # Every put sends our sha256 as x-amz-checksum-sha256: bytes damaged between us and
    # the store are refused by the store itself (BadDigest), nothing is kept.
    k = key()
    wrong = base64.b64encode(hashlib.sha256(b"abd").digest()).decode("ascii")
    with pytest.raises(errors.IntegrityError, match="the store rejected the body"), translate(f"put {k}"):
        store._client.put_object(Bucket=store.bucket, Key=k, Body=b"abc", ContentLength=3, ChecksumSHA256=wrong)
    assert store.head(k) is None


def test_larger_than_one_put_is_refused_unread(store: ObjectStore) -> None:
    def source() -> Iterator[bytes]:
        raise AssertionError("read although too large")
        yield b""

    with pytest.raises(errors.InvalidDraftError, match="more than one PUT takes"):
        store.put(key(), source(), sha256=sha(b""), size=MAX_OBJECT_BYTES + 1)


def test_draft_refs_live_under_drafts(store: ObjectStore) -> None:
    k = f"drafts/{uuid.uuid4()}/{uuid.uuid4()}/0123456789abcdef.json"
    store.put(k, b"{}", sha256=sha(b"{}"), size=2)
    assert store.get_buffer(k, max_bytes=100) == b"{}"


def test_missing_object(store: ObjectStore) -> None:
    k = key()
    with pytest.raises(errors.ExportNotFoundError, match="does not exist"):
        list(store.iter_chunks(k))
    with pytest.raises(errors.ExportNotFoundError):
        store.get_buffer(k, max_bytes=10)


@pytest.mark.parametrize(
    "bad",
    ["other/x.json", "exports/", "drafts/", "exports/../secret", "exports/a\x00b", "exports/a\nb", "/exports/x", "exports//x"],
)
def test_invalid_keys(store: ObjectStore, bad: str) -> None:
    with pytest.raises(errors.InvalidConfigError):
        store.put(bad, b"x", sha256=sha(b"x"), size=1)
    with pytest.raises(errors.InvalidConfigError):
        store.head(bad)


def test_wrong_credentials_are_permanent_and_secret_free(seaweedfs) -> None:  # type: ignore[no-untyped-def]
    wrong_secret = "wrong-secret-" + uuid.uuid4().hex
    s = ObjectStore(seaweedfs.endpoint_url, seaweedfs.bucket, seaweedfs.access_key, wrong_secret)
    with pytest.raises(errors.AuthenticationError) as info:
        s.put(key(), b"x", sha256=sha(b"x"), size=1)
    assert "access denied" in str(info.value) and seaweedfs.endpoint_url in str(info.value)
    assert wrong_secret not in str(info.value) and wrong_secret not in repr(s)
    s2 = ObjectStore(seaweedfs.endpoint_url, seaweedfs.bucket, "nosuchkey", wrong_secret)
    with pytest.raises(errors.AuthenticationError):
        s2.head(key())


def test_missing_bucket_is_a_config_error(seaweedfs) -> None:  # type: ignore[no-untyped-def]
    name = "no-such-bucket-" + uuid.uuid4().hex[:8]
    s = ObjectStore(seaweedfs.endpoint_url, name, seaweedfs.access_key, seaweedfs.secret_key)
    with pytest.raises(errors.InvalidConfigError, match="bucket does not exist") as info:
        s.put(key(), b"x", sha256=sha(b"x"), size=1)
    assert name in str(info.value)
    with pytest.raises(errors.InvalidConfigError, match="bucket does not exist"):
        list(s.iter_chunks(key()))


def test_ensure_bucket_creates(seaweedfs) -> None:  # type: ignore[no-untyped-def]
    name = "dz-new-" + uuid.uuid4().hex[:8]
    s = ObjectStore(seaweedfs.endpoint_url, name, seaweedfs.access_key, seaweedfs.secret_key)
    s.ensure_bucket()
    s.ensure_bucket()
    k = key()
    s.put(k, b"x", sha256=sha(b"x"), size=1)
    assert s.head(k) is not None


def test_endpoint_down_is_transient() -> None:
    s = ObjectStore(f"http://127.0.0.1:{free_port()}", "bucket", "ak", "sk", max_attempts=2, connect_timeout=1)
    with pytest.raises(errors.StorageUnavailableError) as info:
        s.head(key())
    assert info.value.retryable and "EndpointConnectionError" in str(info.value)
    with pytest.raises(errors.StorageUnavailableError):
        s.put(key(), b"x", sha256=sha(b"x"), size=1)
    with pytest.raises(errors.StorageUnavailableError):
        list(s.iter_chunks(key()))


def test_store_stopped_and_restarted(seaweedfs, store: ObjectStore) -> None:  # type: ignore[no-untyped-def]
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
    body = eventually_sync(
        lambda: store.get_buffer(k, max_bytes=10),
        timeout=60, what="the object read back after the restart", ignoring=(errors.StorageUnavailableError,),
    )
    assert body == b"kept"  # data survived the restart


# ----- the error table (errors.translate), without a server -----


def client_error(code: str | None, status: int, message: str = "") -> bce.ClientError:
    error = {"Message": message, **({"Code": code} if code is not None else {})}
    return bce.ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def translated(exc: BaseException) -> errors.DropzoneError:
    with pytest.raises(errors.DropzoneError) as info, translate("object storage http://s3 bucket 'b': put exports/k"):
        raise exc
    assert info.value.__cause__ is exc
    return info.value


@pytest.mark.parametrize(
    ("exc", "expected", "detail"),
    [
        (client_error("NoSuchBucket", 404), errors.InvalidConfigError, "NoSuchBucket"),
        (client_error("NoSuchKey", 404), errors.ExportNotFoundError, "NoSuchKey"),
        (client_error("404", 404), errors.ExportNotFoundError, "404"),  # a HEAD answer has no body
        (client_error("SignatureDoesNotMatch", 403), errors.AuthenticationError, "SignatureDoesNotMatch"),
        (client_error("InvalidAccessKeyId", 403), errors.AuthenticationError, "InvalidAccessKeyId"),
        (client_error(None, 403), errors.AuthenticationError, "403"),
        (client_error("BadDigest", 400), errors.IntegrityError, "BadDigest"),
        (client_error("XAmzContentSHA256Mismatch", 400), errors.IntegrityError, "XAmzContentSHA256Mismatch"),
        (client_error("SlowDown", 503), errors.StorageUnavailableError, "SlowDown"),
        (client_error("RequestTimeout", 400), errors.StorageUnavailableError, "RequestTimeout"),
        (client_error("SomethingNew", 502), errors.StorageUnavailableError, "SomethingNew"),
        (client_error(None, 429), errors.StorageUnavailableError, "429"),
        (client_error("Teapot", 418), errors.StorageUnavailableError, "unexpected reply (Teapot)"),
        (bce.NoCredentialsError(), errors.AuthenticationError, "no credentials configured"),
        (bce.ParamValidationError(report="bad"), errors.InvalidConfigError, "ParamValidationError"),
        (bce.EndpointConnectionError(endpoint_url="http://s3"), errors.StorageUnavailableError, "EndpointConnectionError"),
        (bce.ReadTimeoutError(endpoint_url="http://s3"), errors.StorageUnavailableError, "ReadTimeoutError"),
        (bce.UnseekableStreamError(stream_object=None), errors.StorageUnavailableError, "UnseekableStreamError"),
        (boto3.exceptions.S3UploadFailedError("x"), errors.StorageUnavailableError, "S3UploadFailedError"),
        (urllib3.exceptions.ProtocolError("aborted"), errors.StorageUnavailableError, "ProtocolError"),
        (http.client.IncompleteRead(b"", 10), errors.StorageUnavailableError, "IncompleteRead"),
        (socket.timeout("timed out"), errors.StorageUnavailableError, "TimeoutError"),
        (ConnectionResetError(104, "reset"), errors.StorageUnavailableError, "ConnectionResetError"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_library_error_has_one_meaning(exc: BaseException, expected: type, detail: str) -> None:
    err = translated(exc)
    assert type(err) is expected
    assert str(err).startswith("object storage http://s3 bucket 'b': put exports/k: ")
    assert detail in str(err)


def test_messages_never_carry_the_library_text() -> None:
    err = translated(client_error("AccessDenied", 403, message="Credential=AKIASECRET/20250101"))
    assert "AKIASECRET" not in str(err) and "access denied (AccessDenied)" in str(err)


def test_our_errors_and_bugs_pass_unchanged() -> None:
    ours = errors.IntegrityError("sha256 differs")
    with pytest.raises(errors.IntegrityError) as info, translate("x"):
        raise ours
    assert info.value is ours
    with pytest.raises(KeyError), translate("x"):  # a bug stays a bug (reported as INTERNAL_ERROR)
        raise KeyError("k")


def test_every_botocore_and_boto3_exception_is_in_the_table() -> None:
    # As httpx checks every httpcore exception is mapped: a new botocore class is
    # covered by its base, or this names it.
    classes = [
        value
        for module in (bce, boto3.exceptions, urllib3.exceptions)
        for value in vars(module).values()
        if inspect.isclass(value) and value.__module__ == module.__name__
        and issubclass(value, Exception) and not issubclass(value, Warning)
        # A botocore service-model defect, a bug: reported as INTERNAL_ERROR.
        and not issubclass(value, bce.UndefinedModelAttributeError)
    ]
    unmapped = [c for c in classes if not any(isinstance(k, type) and issubclass(c, k) for k in S3_ERROR_MAP)]
    assert unmapped == []


def test_library_exceptions_are_read_in_one_module() -> None:
    readers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("dropzone", "activities", "starter", "workflows")
        for path in (ROOT / folder).rglob("*.py")
        if "botocore.exceptions" in path.read_text(encoding="utf-8")
        or "ClientError" in path.read_text(encoding="utf-8")
    )
    assert readers == ["dropzone/object_store/errors.py"]
