"""One bucket on an S3-compatible store (SeaweedFS, MinIO, AWS) on boto3: the export bodies' safe copy.

* Every body goes up in ONE streamed PUT (``streams.VerifiedStream``): its
  last bytes are held back until the source has hashed to the expected sha256
  at exactly the expected size, else the request is aborted and nothing is
  stored, on any store. The store checks ``x-amz-checksum-sha256`` (our
  sha256, known up front) as well. Memory: one chunk. A body that comes as
  one chunk (most exports) is verified before the request and sent as bytes:
  one send, and botocore may resend it. One PUT takes up to
  ``MAX_OBJECT_BYTES`` (S3's 5 GiB); the largest body the product makes is far
  below (a draft is at most 512 MiB, ``activities/exports.py``, and renders to
  at most about three times its size). Measured on SeaweedFS (benchmarks/
  bench_transfer.py): about 0.9x a raw HTTP PUT of the same bytes from 8 MB
  to 100 MB; multipart uploads came to 0.6-0.7x, so there are none.
* Our own integrity is the sha256 we compute while streaming, stored as user
  metadata ``sha256``. boto3 >= 1.36 adds checksum headers that some
  S3-compatible stores reject, so its own checksums are only sent and
  validated "when_required".
* Payloads are not SigV4-signed (``UNSIGNED-PAYLOAD``): signing would hash
  every byte once more, and our sha256 already covers them.
* Every library exception goes through ``errors.translate``, the one table.
  Credentials are handed to this client only (never to the environment) and
  never appear in messages or ``repr``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from dropzone import errors
from dropzone.object_store.errors import translate
from dropzone.object_store.streams import VerifiedStream

__all__ = ["DEFAULT_CHUNK", "KEY_PREFIXES", "MAX_OBJECT_BYTES", "ObjectInfo", "ObjectStore", "validate_key"]

MAX_OBJECT_BYTES = 5 * 1024**3  # S3's limit for one PUT
DEFAULT_CHUNK = 1024 * 1024
KEY_PREFIXES = ("exports/", "drafts/")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
    ) -> None:
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.region = region
        self._label = f"object storage {endpoint_url} bucket {bucket!r}"
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

    def _where(self, action: str) -> str:
        return f"{self._label}: {action}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (for the embedded stack and tests)."""
        if self._bucket_exists():
            return
        try:
            with translate(self._where("create the bucket")):
                self._client.create_bucket(Bucket=self.bucket)
        except errors.DropzoneError:
            if not self._bucket_exists():  # else created meanwhile by another process: what we wanted
                raise

    def _bucket_exists(self) -> bool:
        try:
            with translate(self._where("check the bucket")):
                self._client.head_bucket(Bucket=self.bucket)
        except errors.ExportNotFoundError:
            return False
        return True

    def put(
        self,
        key: str,
        chunks: Iterable[bytes] | bytes,
        *,
        sha256: str,
        size: int,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Store ``size`` bytes whose sha256 must be ``sha256``; nothing is stored otherwise.

        Putting the same bytes again is harmless; a failed put leaves what the key held.
        """
        validate_key(key)
        sha256 = sha256.lower()
        if not _SHA256_RE.match(sha256):
            raise ValueError("sha256 must be 64 hex characters")
        if size < 0:
            raise ValueError("size must be >= 0")
        if size > MAX_OBJECT_BYTES:
            raise errors.InvalidDraftError(
                f"{self._label}: {key}: {size} bytes is more than one PUT takes ({MAX_OBJECT_BYTES})",
                fields=["(document)"],
            )
        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = [bytes(chunks)]
        stream = VerifiedStream(chunks, size=size, sha256=sha256, label=f"{self._label}: {key}")
        whole = stream.whole()
        try:
            with translate(self._where(f"put {key}")):
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=stream if whole is None else whole,
                    ContentLength=size,
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode("ascii"),
                    ContentType=content_type,
                    Metadata={"sha256": sha256},
                )
        except Exception:
            if stream.error is not None:  # raised inside the HTTP client, maybe wrapped on the way out
                raise stream.error from None
            raise

    def head(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        try:
            with translate(self._where(f"head {key}")):
                resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except errors.ExportNotFoundError:
            return None
        meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
        return ObjectInfo(size=int(resp.get("ContentLength", 0)), sha256=meta.get("sha256"))

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
        """Stream the object.  A missing object raises ExportNotFoundError."""
        validate_key(key)
        body = self._get(key)["Body"]
        try:
            while True:
                with translate(self._where(f"read {key}")):
                    block = body.read(chunk_size)
                if not block:
                    return
                yield block
        finally:
            body.close()

    def get_buffer(self, key: str, max_bytes: int) -> bytearray | None:
        """The whole object in one buffer sized from its length; None if it exceeds ``max_bytes``.

        For large drafts: copied 1 MiB at a time into a buffer allocated once
        (``read(n)`` would build the body in http.client and copy it again).
        Missing: ExportNotFoundError.
        """
        validate_key(key)
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        resp = self._get(key)
        body = resp["Body"]
        try:
            length = int(resp.get("ContentLength", 0))
            if length > max_bytes:
                return None
            buffer = bytearray(length)
            with memoryview(buffer) as view:
                filled = 0
                while filled < length:
                    with translate(self._where(f"read {key}")):
                        block = body.read(min(DEFAULT_CHUNK, length - filled))
                    if not block:
                        raise errors.StorageUnavailableError(
                            f"{self._where(f'read {key}')}: body ended after {filled} of {length} bytes"
                        )
                    view[filled : filled + len(block)] = block
                    filled += len(block)
            return buffer
        finally:
            body.close()

    def delete(self, key: str) -> None:
        validate_key(key)
        with translate(self._where(f"delete {key}")):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def _get(self, key: str) -> Any:
        with translate(self._where(f"get {key}")):
            return self._client.get_object(Bucket=self.bucket, Key=key)

    def close(self) -> None:
        self._client.close()
