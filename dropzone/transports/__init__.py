"""Dropzone transports: SFTP (paramiko), filesystem, and object storage (boto3).

``open_dropzone(config)`` is the one way to get a ``Dropzone`` for a
connection config; pass an ``SftpConnectionPool`` to reuse SFTP connections
(the returned dropzone's ``close()`` then gives its connection back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dropzone.connection_config import FilesystemConfig, SftpConfig
from dropzone.transports.base import AckFile, DeliveryResult, Dropzone, ProbeResult

if TYPE_CHECKING:
    from dropzone.transports.sftp import SftpConnectionPool

__all__ = ["AckFile", "DeliveryResult", "Dropzone", "ProbeResult", "open_dropzone"]


def open_dropzone(
    config: SftpConfig | FilesystemConfig,
    *,
    pool: SftpConnectionPool | None = None,
) -> Dropzone:
    """Open a session on the dropzone ``config`` describes (a context manager).

    SFTP: connects, verifies the pinned host key and authenticates now, so
    connection problems surface here as project errors.
    """
    if isinstance(config, FilesystemConfig):
        from dropzone.transports.filesystem import FilesystemDropzone

        return FilesystemDropzone(config)
    if isinstance(config, SftpConfig):
        from dropzone.transports.sftp import SftpDropzone

        if pool is not None:
            return pool.open(config)
        return SftpDropzone.connect(config)
    raise TypeError(f"not a connection config: {type(config).__name__}")
