"""The ERP's side of an SFTP dropzone (``ErpSide``): a private, unpooled connection.

``SftpDropzone`` implements every ``ErpSide`` method (listing through
``_listdir``); the ERP simulator opens its own connection because it is a
separate client of the server, not one of the worker's pooled sessions.
"""

from __future__ import annotations

from dropzone.connection_config import SftpConfig
from dropzone.transports.sftp import SftpDropzone

__all__ = ["ErpSideSftpDropzone", "open_erp_side_sftp"]

ErpSideSftpDropzone = SftpDropzone


def open_erp_side_sftp(config: SftpConfig) -> SftpDropzone:
    """A private connection (not pooled): the ERP side is a separate client of the server."""
    return SftpDropzone.connect(config)
