"""Every ack file waiting in a dropzone's ``ack_path``, not just one export's.

``Dropzone.list_acks(filename)`` stats the two exact names of one export. To
find acks nobody waits for (an export this ledger never wrote, a duplicate
for one that has finished), the activity needs the whole directory. The
``Dropzone`` port has no listing primitive yet, so this module lists with the
transport's own error translation (``FilesystemDropzone._os``,
``SftpDropzone._sftp``); once ``FileDropzoneBase`` grows a ``_listdir``
primitive, ``list_ack_files`` becomes a method there and this module goes.

Only names that ``naming.parse_ack_name`` accepts are returned: anything else
(``*.tmp``, hidden files, separators, control characters, non-ASCII
look-alikes) cannot be one of our acks and is never touched.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterable

from dropzone import errors, naming
from dropzone.transports.base import AckFile, Dropzone
from dropzone.transports.filesystem import FilesystemDropzone
from dropzone.transports.sftp import SftpDropzone

__all__ = ["MAX_LISTED_ACKS", "list_ack_files"]

# A directory flooded with files must not make one poll unbounded.
MAX_LISTED_ACKS = 10_000


def list_ack_files(dropzone: Dropzone) -> list[AckFile]:
    """``ack_*`` / ``error_*`` regular files directly in ack_path, oldest first."""
    ack_dir = getattr(dropzone, "ack_path", None)
    if not ack_dir:
        raise errors.InvalidConfigError(f"{getattr(dropzone, 'label', 'dropzone')}: no ack_path configured")
    if isinstance(dropzone, FilesystemDropzone):
        entries = _list_filesystem(dropzone, ack_dir)
    elif isinstance(dropzone, SftpDropzone):
        entries = _list_sftp(dropzone, ack_dir)
    else:
        raise TypeError(f"cannot list ack files of a {type(dropzone).__name__}")
    found: list[AckFile] = []
    for name, size, mtime in entries:
        parsed = naming.parse_ack_name(name)
        if parsed is None:
            continue
        kind, export_filename = parsed
        found.append(AckFile(name=name, kind=kind, export_filename=export_filename, size=size, mtime=mtime))
        if len(found) >= MAX_LISTED_ACKS:
            break
    found.sort(key=lambda ack: (ack.mtime, ack.name))
    return found


def _list_filesystem(dropzone: FilesystemDropzone, ack_dir: str) -> Iterable[tuple[str, int, float]]:
    out: list[tuple[str, int, float]] = []
    with dropzone._os("list", ack_dir), os.scandir(ack_dir) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # moved by another poller meanwhile
                continue
            if stat_mod.S_ISREG(st.st_mode):
                out.append((entry.name, st.st_size, st.st_mtime))
    return out


def _list_sftp(dropzone: SftpDropzone, ack_dir: str) -> Iterable[tuple[str, int, float]]:
    with dropzone._sftp(f"list {ack_dir}") as sftp:
        attrs = sftp.listdir_attr(ack_dir)
    return [
        (a.filename, a.st_size or 0, float(a.st_mtime or 0))
        for a in attrs
        if a.st_mode is not None and stat_mod.S_ISREG(a.st_mode)
    ]
