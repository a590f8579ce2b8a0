"""What the SFTP transport tests share: open a dropzone on a test server, deliver, list."""

from __future__ import annotations

import os

from dropzone.connection_config import parse_connection_config
from dropzone.delivery import DeliveryResult, Dropzone
from dropzone.transports.sftp import SftpTransport
from tests.dropzone.transports._util import chunked, sha

FILENAME = "sales_order_0a1b2c3d_20250101_120000_deadbeef.json"


def connect(server, **overrides) -> Dropzone:
    """The delivery algorithm over a private ``SftpTransport`` to ``server``."""
    return Dropzone(SftpTransport.connect(parse_connection_config(server.config(**overrides))))


def deliver(dz: Dropzone, data: bytes, name: str = FILENAME, token: str = "tok1", chunk: int = 65536) -> DeliveryResult:
    return dz.deliver(name, chunked(data, chunk), size=len(data), sha256=sha(data), token=token)


def listing(server, remote_dir: str) -> list[str]:
    return sorted(os.listdir(server.local_path(remote_dir)))
