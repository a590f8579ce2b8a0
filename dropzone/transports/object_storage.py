"""Object storage (S3 / MinIO / SeaweedFS) on boto3: the export bodies' safe copy.

* boto3 >= 1.36 adds checksum headers that some S3-compatible stores reject,
  so checksums are only sent/validated "when_required" (boto3 >= 1.36 sends checksum headers some S3-compatible stores reject).  Our own
  integrity is the sha256 we compute while streaming, stored as user metadata
  ``sha256`` (a multipart ETag is not an MD5 of the body).  Every request body
  still carries Content-MD5, so the store rejects bytes damaged in transit.
* Bodies above ``MULTIPART_THRESHOLD`` are streamed from the iterator in one
  PUT whose last bytes are held back until the source has hashed to the
  expected sha256 (else the request is aborted: nothing stored, on any store);
  the store also checks ``x-amz-checksum-sha256``. Multipart uploads came to
  0.6-0.7x a raw PUT's speed on SeaweedFS, one streamed PUT to ~1x (benchmarks/).
* Above ``SINGLE_PUT_LIMIT`` (S3 takes 5 GiB per PUT) a multipart upload,
  ``PARTS_IN_FLIGHT`` parts at once, completed only when the streamed bytes
  hash to the expected sha256, aborted otherwise.
* Payloads are not SigV4-signed (``UNSIGNED-PAYLOAD``): signing would hash
  every byte a third time, and Content-MD5 plus our sha256 already cover them.
* Every botocore exception goes through ``_translate`` — the only place.
  Credentials are handed to this client only (never to the environment) and
  never appear in messages or ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from dropzone import errors

__all__ = ["MULTIPART_THRESHOLD", "ObjectInfo", "ObjectStore", "validate_key"]

MULTIPART_THRESHOLD = 16 * 1024 * 1024  # up to here: buffered, hashed, then one PUT with Content-MD5
SINGLE_PUT_LIMIT = 4 * 1024**3  # up to here: one streamed PUT (S3 allows 5 GiB); above: multipart
PART_SIZE = 16 * 1024 * 1024  # >= 5 MiB (S3 minimum); larger parts: less per-part overhead in the store
PARTS_IN_FLIGHT = 3  # memory: at most this many parts (+ the one being filled) are held
DEFAULT_CHUNK = 1024 * 1024
KEY_PREFIX = "exports/"
KEY_PREFIXES = (KEY_PREFIX, "drafts/")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

_UNAVAILABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "OperationAborted",
}
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "AllAccessDisabled",
}
_INTEGRITY_CODES = {"BadDigest", "InvalidDigest", "IncompleteBody", "XAmzContentSHA256Mismatch"}


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    sha256: str | None  # our metadata; None for an object we did not write


def validate_key(key: str) -> str:
    """Keys live under ``exports/`` (rendered files) or ``drafts/`` (drafts too large
    for a Temporal payload) and cannot contain ``..``, NUL or control characters."""
    prefix = next((p for p in KEY_PREFIXES if isinstance(key, str) and key.startswith(p)), None)
    if (
        prefix is None
        or len(key) == len(prefix)
        or ".." in key
        or _CONTROL.search(key)
        or "//" in key
        or len(key.encode("utf-8")) > 1024
    ):
        raise errors.InvalidConfigError(
            f"invalid object key {key!r}: must start with one of {KEY_PREFIXES}, without '..' or control characters"
        )
    return key


class ObjectStore:
    """One bucket on an S3-compatible store.  Thread-safe (boto3 clients are)."""

    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        region: str = "us-east-1",
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        max_pool_connections: int = 16,
        single_put_limit: int = SINGLE_PUT_LIMIT,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self.single_put_limit = single_put_limit
        self._label = f"object storage {endpoint_url}"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A private session with exactly these keys. boto3 falls back to the machine's
        # credentials (environment, ~/.aws, instance metadata) for empty keys: that
        # happens only when both are None, which the settings allow only on request
        # (DROPZONE_S3_USE_AMBIENT_CREDENTIALS).
        if (access_key is None) != (secret_key is None) or access_key == "" or secret_key == "":
            raise errors.InvalidConfigError(f"{self._label}: access key and secret key must both be given")
        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
        )
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config)

    def __repr__(self) -> str:
        return f"ObjectStore(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r})"

    # ----- the one translation point -----

    def _translate(self, exc: BaseException, action: str) -> errors.DropzoneError:
        where = f"{self._label}: {action}"
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code == "NoSuchBucket":
                return errors.InvalidConfigError(f"{self._label}: bucket {self.bucket!r} does not exist")
            if code in _AUTH_CODES or status in (401, 403):
                return errors.AuthenticationError(f"{self._label}: access denied ({code or status})")
            if code in _INTEGRITY_CODES:
                return errors.IntegrityError(f"{where}: the store rejected the body ({code})")
            if code in _UNAVAILABLE_CODES or status >= 500 or status in (408, 429):
                return errors.StorageUnavailableError(f"{where}: {code or status}")
            # Any other 4xx: retried a bounded number of times by the activity policy.
            return errors.StorageUnavailableError(f"{where}: unexpected reply {code or status}")
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            return errors.AuthenticationError(f"{self._label}: no credentials configured")
        if isinstance(exc, bce.ParamValidationError):
            return errors.InvalidConfigError(f"{where}: invalid request parameters")
        if isinstance(
            exc,
            bce.EndpointConnectionError
            | bce.ConnectTimeoutError
            | bce.ReadTimeoutError
            | bce.ConnectionClosedError
            | bce.ResponseStreamingError
            | bce.HTTPClientError
            | bce.ConnectionError,
        ):
            return errors.StorageUnavailableError(f"{where}: {type(exc).__name__}")
        if isinstance(exc, bce.BotoCoreError | OSError):
            return errors.StorageUnavailableError(f"{where}: {type(exc).__name__}")
        return errors.StorageUnavailableError(f"{where}: {type(exc).__name__}")

    def _fail(self, exc: BaseException, action: str) -> NoReturn:
        raise self._translate(exc, action) from exc

    @staticmethod
    def _is_not_found(exc: bce.ClientError) -> bool:
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return err.get("Code") in ("404", "NoSuchKey", "NotFound") or status == 404

    # ----- API -----

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (for the embedded stack and tests)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except bce.ClientError as exc:
            if not self._is_not_found(exc):
                self._fail(exc, f"check bucket {self.bucket}")
        except Exception as exc:
            self._fail(exc, f"check bucket {self.bucket}")
        try:
            self._client.create_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            self._fail(exc, f"create bucket {self.bucket}")
        except Exception as exc:
            self._fail(exc, f"create bucket {self.bucket}")

    def put(
        self,
        key: str,
        chunks: Iterable[bytes] | bytes,
        *,
        sha256: str,
        size: int,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Store ``size`` bytes whose sha256 must be ``sha256``; nothing is stored otherwise."""
        validate_key(key)
        sha256 = sha256.lower()
        if not _SHA256_RE.match(sha256):
            raise ValueError("sha256 must be 64 hex characters")
        if size < 0:
            raise ValueError("size must be >= 0")
        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = [bytes(chunks)]
        if size > self.single_put_limit:
            self._put_multipart(key, chunks, sha256=sha256, size=size, content_type=content_type)
            return
        if size > MULTIPART_THRESHOLD:
            self._put_streamed(key, chunks, sha256=sha256, size=size, content_type=content_type)
            return
        body = bytearray()
        for chunk in chunks:
            body += chunk
            if len(body) > size:
                raise errors.IntegrityError(f"{self._label}: {key}: source yielded more than {size} bytes")
        self._check(key, len(body), hashlib.sha256(body).hexdigest(), size=size, sha256=sha256)
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=bytes(body),
                ContentLength=len(body),
                ContentMD5=_md5_b64(body),
                ContentType=content_type,
                Metadata={"sha256": sha256},
            )
        except Exception as exc:
            self._fail(exc, f"put {key}")

    def _put_streamed(
        self, key: str, chunks: Iterable[bytes], *, sha256: str, size: int, content_type: str
    ) -> None:
        """One PUT streamed from the chunks: as fast as a raw PUT (benchmarks/).

        Atomic on every store: ``_VerifiedStream`` holds back the body's last
        bytes until the whole source has hashed to ``sha256`` at exactly ``size``
        bytes, and aborts the request otherwise, so the store never sees a
        complete body. ``x-amz-checksum-sha256`` (our sha256, known up front)
        makes stores that support it verify the bytes they received as well.
        """
        stream = _VerifiedStream(chunks, size=size, sha256=sha256, label=f"{self._label}: {key}")
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=stream,
                ContentLength=size,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode("ascii"),
                ContentType=content_type,
                Metadata={"sha256": sha256},
            )
        except errors.DropzoneError:
            raise
        except Exception as exc:
            if stream.error is not None:  # raised inside the HTTP client and wrapped on the way out
                raise stream.error from None
            self._fail(exc, f"put {key}")

    def _check(self, key: str, n: int, digest: str, *, size: int, sha256: str) -> None:
        if n != size:
            raise errors.IntegrityError(f"{self._label}: {key}: got {n} bytes, expected {size}")
        if digest != sha256:
            raise errors.IntegrityError(f"{self._label}: {key}: sha256 {digest} differs from expected {sha256}")

    def _put_multipart(
        self, key: str, chunks: Iterable[bytes], *, sha256: str, size: int, content_type: str
    ) -> None:
        try:
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type, Metadata={"sha256": sha256}
            )["UploadId"]
        except Exception as exc:
            self._fail(exc, f"start multipart upload of {key}")
        completed = False
        try:
            parts = self._upload_parts(key, upload_id, chunks, sha256=sha256, size=size)
            try:
                self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except Exception as exc:
                self._fail(exc, f"complete multipart upload of {key}")
            completed = True
        finally:
            if not completed:
                # Best effort: a bucket lifecycle rule cleans up what an abort misses.
                with contextlib.suppress(Exception):
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def _upload_part(self, key: str, upload_id: str, number: int, pieces: list[memoryview]) -> dict[str, Any]:
        md5 = hashlib.md5(usedforsecurity=False)
        for piece in pieces:
            md5.update(piece)
        body = _PiecesReader(pieces)
        try:
            resp = self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=len(body),
                ContentMD5=base64.b64encode(md5.digest()).decode("ascii"),
            )
        except Exception as exc:
            self._fail(exc, f"upload part {number} of {key}")
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _upload_parts(
        self, key: str, upload_id: str, chunks: Iterable[bytes], *, sha256: str, size: int
    ) -> list[dict[str, Any]]:
        """Cut the stream into parts and upload them, ``PARTS_IN_FLIGHT`` at a time.

        A part is a list of views of the caller's chunks, never a joined copy:
        copying 100 MB (and faulting in fresh pages for it) cost more than the
        sha256 of the same bytes (benchmarks/).
        """
        h = hashlib.sha256()
        total = 0
        pending: list[memoryview] = []
        pending_size = 0
        in_flight: deque[Future[dict[str, Any]]] = deque()
        parts: list[dict[str, Any]] = []
        with ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT, thread_name_prefix="s3-part") as pool:
            try:

                def submit(pieces: list[memoryview]) -> None:
                    while len(in_flight) >= PARTS_IN_FLIGHT:
                        parts.append(in_flight.popleft().result())
                    number = len(parts) + len(in_flight) + 1
                    in_flight.append(pool.submit(self._upload_part, key, upload_id, number, pieces))

                for chunk in chunks:
                    total += len(chunk)
                    if total > size:
                        raise errors.IntegrityError(f"{self._label}: {key}: source yielded more than {size} bytes")
                    if not isinstance(chunk, bytes):
                        chunk = bytes(chunk)  # a view of a mutable buffer could change under the upload
                    h.update(chunk)
                    view = memoryview(chunk)
                    # Parts are exactly PART_SIZE (only the last may be shorter).
                    while pending_size + len(view) >= PART_SIZE:
                        take = PART_SIZE - pending_size
                        submit([*pending, view[:take]])
                        pending, pending_size, view = [], 0, view[take:]
                    if len(view):
                        pending.append(view)
                        pending_size += len(view)
                if pending or not (parts or in_flight):
                    submit(pending)
                while in_flight:
                    parts.append(in_flight.popleft().result())
            finally:
                for future in in_flight:
                    future.cancel()
        self._check(key, total, h.hexdigest(), size=size, sha256=sha256)
        return parts

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except bce.ClientError as exc:
            if self._is_not_found(exc):
                return None
            self._fail(exc, f"head {key}")
        except Exception as exc:
            self._fail(exc, f"head {key}")
        meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
        return ObjectInfo(size=int(resp.get("ContentLength", 0)), sha256=meta.get("sha256"))

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """Stream the object.  A missing object raises ExportNotFoundError."""
        validate_key(key)
        body = self._get(key, None)
        try:
            while True:
                try:
                    block = body.read(chunk_size)
                except Exception as exc:
                    self._fail(exc, f"read {key}")
                if not block:
                    return
                yield block
        finally:
            body.close()

    def get_bytes(self, key: str, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes (so a caller can tell "too big"); missing → ExportNotFoundError."""
        validate_key(key)
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        body = self._get(key, f"bytes=0-{max_bytes}")
        try:
            try:
                data = body.read(max_bytes + 1)
            except Exception as exc:
                self._fail(exc, f"read {key}")
        finally:
            body.close()
        return data[: max_bytes + 1]

    def get_buffer(self, key: str, max_bytes: int) -> bytearray | None:
        """The whole object in one buffer sized from its length; None if it exceeds ``max_bytes``.

        For large drafts: ``get_bytes`` goes through ``read(n)``, which builds the
        body once in http.client and copies it again into ``bytes``; here it is
        copied 1 MiB at a time into a buffer allocated once.
        Missing → ExportNotFoundError.
        """
        validate_key(key)
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        resp = self._get_response(key, None)
        body = resp["Body"]
        try:
            length = int(resp.get("ContentLength", 0))
            if length > max_bytes:
                return None
            buffer = bytearray(length)
            view = memoryview(buffer)
            filled = 0
            while filled < length:
                try:
                    block = body.read(min(DEFAULT_CHUNK, length - filled))
                except Exception as exc:
                    self._fail(exc, f"read {key}")
                if not block:
                    raise errors.StorageUnavailableError(
                        f"{self._label}: read {key}: body ended after {filled} of {length} bytes"
                    )
                view[filled : filled + len(block)] = block
                filled += len(block)
            view.release()
            return buffer
        finally:
            body.close()

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            self._fail(exc, f"delete {key}")

    def _get(self, key: str, byte_range: str | None) -> Any:
        return self._get_response(key, byte_range)["Body"]

    def _get_response(self, key: str, byte_range: str | None) -> Any:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range:
            kwargs["Range"] = byte_range
        try:
            return self._client.get_object(**kwargs)
        except bce.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "InvalidRange":  # an empty object asked for bytes=0-N
                return {"Body": _EmptyBody(), "ContentLength": 0}
            if self._is_not_found(exc) and code != "NoSuchBucket":
                raise errors.ExportNotFoundError(f"{self._label}: {self.bucket}/{key} does not exist") from exc
            self._fail(exc, f"get {key}")
        except Exception as exc:
            self._fail(exc, f"get {key}")

    def close(self) -> None:
        self._client.close()


class _VerifiedStream(io.RawIOBase):
    """A request body read from chunks that releases its last bytes only once verified.

    Hashes and counts as it reads; more than ``size`` bytes, fewer, or another
    sha256 raise ``IntegrityError`` from ``read`` (kept in ``error``, since the
    HTTP stack may wrap it) before the final bytes leave, so the request is
    aborted and nothing is stored. Not seekable: botocore cannot resend it,
    and a failed request surfaces as a transient error that the activity retries.
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
                chunk = bytes(chunk)
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

    def read(self, size: int = -1) -> bytes:
        if not self._buffer and not self._next_chunk():
            return b""
        n = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
        block, self._buffer = self._buffer[:n], self._buffer[n:]
        return bytes(block)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _PiecesReader(io.RawIOBase):
    """A seekable, read-only file over a list of byte views (a multipart part, uncopied).

    botocore streams it to the socket and seeks back to 0 when it retries.
    """

    def __init__(self, pieces: list[memoryview]) -> None:
        self._pieces = pieces
        self._size = sum(len(p) for p in pieces)
        self._pos = 0
        self._index = 0  # piece holding _pos
        self._offset = 0  # _pos within that piece

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        target = max(0, min(self._size, base + offset))
        self._pos, self._index, self._offset = 0, 0, 0
        self._advance(target)
        return self._pos

    def _advance(self, n: int) -> None:
        while n and self._index < len(self._pieces):
            step = min(n, len(self._pieces[self._index]) - self._offset)
            self._pos += step
            self._offset += step
            n -= step
            if self._offset == len(self._pieces[self._index]):
                self._index += 1
                self._offset = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        out = []
        while size > 0 and self._index < len(self._pieces):
            piece = self._pieces[self._index]
            block = piece[self._offset : self._offset + size]
            out.append(block)
            size -= len(block)
            self._advance(len(block))
        return b"".join(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _EmptyBody:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _md5_b64(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
