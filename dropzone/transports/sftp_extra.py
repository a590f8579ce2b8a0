"""Directory listing for SFTP dropzones, which the ERP side (``ErpSide``) needs.

``FileDropzoneBase._listdir`` is the primitive behind ``list_exports`` and
``answered_exports``; ``SftpDropzone`` does not implement it yet, so this
subclass adds it through the parent's own error translation (``_sftp``).
When ``SftpDropzone`` grows the same method, this module reduces to the alias
``ErpSideSftpDropzone = SftpDropzone``.
"""

from __future__ import annotations

import stat as stat_mod

from dropzone import errors
from dropzone.connection_config import SftpConfig
from dropzone.transports.base import DirEntry, StatResult
from dropzone.transports.sftp import (
    FX_NO_SUCH_FILE,
    FX_NO_SUCH_PATH,
    SftpDropzone,
    SftpStatusError,
)

__all__ = ["ErpSideSftpDropzone", "open_erp_side_sftp"]


class ErpSideSftpDropzone(SftpDropzone):
    """An ``SftpDropzone`` that can also list directories."""

    def _listdir(self, directory: str) -> list[DirEntry]:
        with self._sftp(f"list {directory}") as sftp:
            try:
                attrs = sftp.listdir_attr(directory)
            except SftpStatusError as exc:
                if exc.sftp_code in (FX_NO_SUCH_FILE, FX_NO_SUCH_PATH):
                    # The translation would say "no such file"; say which directory.
                    raise errors.MissingDirectoryError(f"{self.label}: directory {directory} does not exist") from exc
                raise
        entries = []
        for a in attrs:
            mode = a.st_mode or 0
            stat = StatResult(
                size=a.st_size or 0,
                mtime=float(a.st_mtime or 0),
                is_dir=stat_mod.S_ISDIR(mode),
                is_file=stat_mod.S_ISREG(mode),
            )
            entries.append(DirEntry(a.filename, stat))
        return entries


def open_erp_side_sftp(config: SftpConfig) -> ErpSideSftpDropzone:
    """A private connection (not pooled): the ERP side is a separate client of the server."""
    return ErpSideSftpDropzone.connect(config)
