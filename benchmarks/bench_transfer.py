"""Transfers against the best tool for the same bytes, same server, same run.

* SFTP: ``Dropzone.deliver`` over ``SftpTransport`` (paramiko; connect, stat, ``.tmp`` write,
  fsync, verify, posix-rename) vs OpenSSH's own ``sftp`` client doing a plain
  ``put`` to the same ``sshd``. Both include connecting and authenticating.
* S3: ``ObjectStore.put`` (1 MiB chunks streamed in one PUT, verified against
  our sha256 before its last bytes leave, our sha256 as metadata) vs one raw
  ``http.client`` PUT of the same bytes to the same SeaweedFS bucket (SigV4
  header, unsigned payload: no hashing at all).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from benchmarks.measure import Row, throughput_pair
from benchmarks.stack import Stack, run_quiet
from dropzone.connection_config import parse_connection_config
from dropzone.delivery import Dropzone
from dropzone.transports.sftp import SftpTransport

MiB = 1024 * 1024
CHUNK = MiB  # what ObjectStore.iter_chunks and the spool reader hand on


def _payload(stack: Stack, size: int) -> tuple[Path, str]:
    path = stack.base / f"payload-{size}.bin"
    if not path.exists():
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, digest


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            yield block


def sftp_rows(stack: Stack, sizes_mb: list[int], runs: int, targets: dict[int, float]) -> list[Row]:
    server = stack.sftp
    rows = []
    for mb in sizes_mb:
        size = mb * MiB
        path, digest = _payload(stack, size)
        raw = stack.sftp_config(ack_path=None)
        config = parse_connection_config(raw)
        export_dir = server.local_path(raw["export_path"])
        batch = stack.base / "put.batch"

        def ours() -> None:
            name = f"bench_{uuid.uuid4().hex[:12]}.json"
            with Dropzone(SftpTransport.connect(config)) as dz:
                dz.deliver(name, _file_chunks(path), size=size, sha256=digest, token=uuid.uuid4().hex[:12])
            (export_dir / name).unlink()

        def openssh() -> None:
            name = f"cli_{uuid.uuid4().hex[:12]}.json"
            batch.write_text(f"put {path} {raw['export_path']}/{name}\n")
            run_quiet(stack.sftp_cli(str(batch)))
            (export_dir / name).unlink()

        ours()  # warm-up: page cache, host keys, imports
        openssh()
        rows.append(
            throughput_pair(
                f"SFTP deliver {mb} MB (paramiko) vs OpenSSH `sftp put`",
                ours,
                openssh,
                amount=size / 1e6,
                unit="MB/s",
                runs=runs,
                baseline_name="OpenSSH sftp client",
                min_ratio=targets.get(mb, 0.75),
                note="both connect + authenticate; ours also fsyncs, verifies size and renames atomically",
            )
        )
    return rows


def _raw_put(endpoint: str, bucket: str, key: str, body: bytes, access: str, secret: str, region: str) -> None:
    url = f"{endpoint}/{bucket}/{key}"
    request = AWSRequest(method="PUT", url=url, headers={"Content-Length": str(len(body))})
    # Unsigned payload: the baseline hashes nothing, it only moves bytes.
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    S3SigV4Auth(Credentials(access, secret), "s3", region).add_auth(request)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        conn.request("PUT", parts.path, body=body, headers=dict(request.headers.items()))
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"raw PUT failed: HTTP {resp.status}")
    finally:
        conn.close()


def s3_rows(stack: Stack, sizes_mb: list[int], runs: int, min_ratio: float) -> list[Row]:
    s3 = stack.s3
    store = stack.object_store()
    rows = []
    for mb in sizes_mb:
        size = mb * MiB
        path, digest = _payload(stack, size)
        body = path.read_bytes()

        def chunks() -> Iterator[bytes]:
            view = memoryview(body)
            for start in range(0, size, CHUNK):
                yield bytes(view[start : start + CHUNK])

        def ours() -> None:
            key = f"exports/bench/{uuid.uuid4().hex}.json"
            store.put(key, chunks(), sha256=digest, size=size)
            store.delete(key)

        def raw_put() -> None:
            key = f"exports/bench/raw-{uuid.uuid4().hex}.json"
            _raw_put(s3.endpoint_url, s3.bucket, key, body, s3.access_key, s3.secret_key, s3.region)
            store.delete(key)

        ours()
        raw_put()
        rows.append(
            throughput_pair(
                f"S3 PUT {mb} MB (ObjectStore.put) vs raw HTTP PUT",
                ours,
                raw_put,
                amount=size / 1e6,
                unit="MB/s",
                runs=runs,
                baseline_name="http.client PUT, unsigned payload",
                min_ratio=min_ratio,
                note=(
                    "ours: 1 MiB chunks streamed in one PUT whose last bytes wait until our sha256 matches; "
                    "the store checks x-amz-checksum-sha256 too"
                ),
            )
        )
    return rows
