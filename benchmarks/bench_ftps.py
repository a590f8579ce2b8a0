"""FTPS delivery against a plain ``ftplib`` upload: same server, same TLS, same run.

* ours: ``open_dropzone`` + ``Dropzone.deliver`` + close — connect, ``AUTH TLS``,
  the certificate verified against the CA bundle, login, ``PROT P``, MLST of the
  final name and of the ``.tmp``, STOR of the unique ``.tmp`` with every byte
  hashed on the way, ``SITE CHMOD``, MLST to verify the size, MLST + RNFR/RNTO,
  QUIT.
* baseline: ``ftplib.FTP_TLS`` doing only the upload — connect, ``AUTH TLS`` with
  the same CA check, login, ``PROT P``, ``storbinary`` of the same file in the
  same 1 MiB blocks, QUIT.

The server is the test suite's pyftpdlib with TLS (``tests/fixtures/ftps.py``),
in its own process on 127.0.0.1; runs alternate ours/baseline, ratios of medians.

    python -m benchmarks.bench_ftps [--mb 100] [--runs 7]
"""

from __future__ import annotations

import argparse
import ftplib
import hashlib
import os
import ssl
import tempfile
import uuid
from pathlib import Path

from benchmarks.bench_transfer import CHUNK, _file_chunks
from benchmarks.measure import Row, throughput_pair
from dropzone.connection_config import parse_connection_config
from dropzone.connectors import open_dropzone
from tests.fixtures.ftps import FtpsServerInfo, running_ftp_server

MiB = 1024 * 1024


def _payload(directory: Path, size: int) -> tuple[Path, str]:
    path = directory / f"payload-{size}.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return path, digest.hexdigest()


def _one_size(server: FtpsServerInfo, directory: Path, mb: int, runs: int, min_ratio: float) -> Row:
    size = mb * MiB
    path, digest = _payload(directory, size)
    raw = server.config(ack_path=None)
    config = parse_connection_config(raw)
    export_dir = server.local_path(raw["export_path"])

    def ours() -> None:
        name = f"sales_order_bench-{uuid.uuid4().hex[:12]}.json"
        with open_dropzone(config) as dz:
            dz.deliver(name, _file_chunks(path), size=size, sha256=digest, token=uuid.uuid4().hex[:12])
        (export_dir / name).unlink()

    def plain_ftplib() -> None:
        name = f"ftplib_{uuid.uuid4().hex[:12]}.json"
        context = ssl.create_default_context(cafile=str(server.ca_path))
        with ftplib.FTP_TLS(context=context, timeout=60) as ftp:
            ftp.connect(server.host, server.port)
            ftp.login(server.username, server.password)
            ftp.prot_p()
            with open(path, "rb") as f:
                ftp.storbinary(f"STOR {raw['export_path']}/{name}", f, blocksize=CHUNK)
        (export_dir / name).unlink()

    ours()  # warm-up: page cache, imports, the server's first connections
    plain_ftplib()
    return throughput_pair(
        f"FTPS deliver {mb} MB (ftplib + checks) vs plain ftplib `storbinary`",
        ours,
        plain_ftplib,
        amount=size / 1e6,
        unit="MB/s",
        runs=runs,
        baseline_name="ftplib FTP_TLS storbinary",
        min_ratio=min_ratio,
        note="same pyftpdlib server and TLS, both connect + log in; ours also hashes every byte, "
        "writes a unique .tmp, verifies its size and renames it after checking the final name is free",
    )


def ftps_rows(sizes_mb: list[int], runs: int, min_ratio: float = 0.9) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="dz-bench-ftps-") as tmp, running_ftp_server(tls=True) as server:
        return [_one_size(server, Path(tmp), mb, runs, min_ratio) for mb in sizes_mb]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for row in ftps_rows([args.mb], args.runs):
        print(f"{row.name}: {row.ours.text()} vs {row.baseline.text() if row.baseline else '—'}: {row.ratio_text()}")


if __name__ == "__main__":
    main()
