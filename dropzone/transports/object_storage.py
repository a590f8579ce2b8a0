"""Object storage (S3 / MinIO / SeaweedFS) on boto3: the export bodies' safe copy.

* boto3 >= 1.36 adds checksum headers that some S3-compatible stores reject,
  so checksums are only sent/validated "when_required" (NOTES.md).  Our own
  integrity is the sha256 we compute while streaming, stored as user metadata
  ``sha256`` (a multipart ETag is not an MD5 of the body).  Every request body
  still carries Content-MD5, so the store rejects bytes damaged in transit.
* Bodies above ``MULTIPART_THRESHOLD`` go up as a multipart upload fed from
  the iterator, one part in memory at a time; the upload is completed only
  when the streamed bytes hash to the expected sha256, and aborted otherwise.
* Every botocore exception goes through ``_translate`` — the only place.
  Credentials are handed to this client only (never to the environment) and
  never appear in messages or ``repr``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from dropzone import errors

__all__ = ["MULTIPART_THRESHOLD", "ObjectInfo", "ObjectStore", "validate_key"]

MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024  # >= 5 MiB (S3 minimum); one part is held in memory at a time
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
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        max_pool_connections: int = 16,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self._label = f"object storage {endpoint_url}"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A private session: no shared/default credential chain, no environment lookups.
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
        if size > MULTIPART_THRESHOLD:
            self._put_multipart(key, chunks, sha256=sha256, size=size, content_type=content_type)
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
            h = hashlib.sha256()
            parts: list[dict[str, Any]] = []
            buf = bytearray()
            total = 0

            def upload(data: bytes) -> None:
                number = len(parts) + 1
                try:
                    resp = self._client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        ContentLength=len(data),
                        ContentMD5=_md5_b64(data),
                    )
                except Exception as exc:
                    self._fail(exc, f"upload part {number} of {key}")
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})

            for chunk in chunks:
                total += len(chunk)
                if total > size:
                    raise errors.IntegrityError(f"{self._label}: {key}: source yielded more than {size} bytes")
                h.update(chunk)
                buf += chunk
                while len(buf) >= PART_SIZE:
                    part = bytes(buf[:PART_SIZE])
                    del buf[:PART_SIZE]
                    upload(part)
            if buf or not parts:
                upload(bytes(buf))
                buf.clear()
            self._check(key, total, h.hexdigest(), size=size, sha256=sha256)
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

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            self._fail(exc, f"delete {key}")

    def _get(self, key: str, byte_range: str | None) -> Any:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if byte_range:
            kwargs["Range"] = byte_range
        try:
            return self._client.get_object(**kwargs)["Body"]
        except bce.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "InvalidRange":  # an empty object asked for bytes=0-N
                return _EmptyBody()
            if self._is_not_found(exc) and code != "NoSuchBucket":
                raise errors.ExportNotFoundError(f"{self._label}: {self.bucket}/{key} does not exist") from exc
            self._fail(exc, f"get {key}")
        except Exception as exc:
            self._fail(exc, f"get {key}")

    def close(self) -> None:
        self._client.close()


class _EmptyBody:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _md5_b64(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
