"""Every ack file waiting in a dropzone's ``ack_path``, not just one export's.

``Dropzone.list_acks(filename)`` stats the two exact names of one export. To
find acks nobody waits for (an export this ledger never wrote, a duplicate
for one that has finished), the activity needs the whole directory, listed
through the transport's ``_listdir`` primitive (its own error translation).

Only names that ``naming.parse_ack_name`` accepts are returned: anything else
(``*.tmp``, hidden files, separators, control characters, non-ASCII
look-alikes) cannot be one of our acks and is never touched. A link with an
ack's name is listed (``is_link``) so that the sweep refuses it, unread; before
any ack is returned, ``processed/`` and ``error/`` are checked not to be links
(the listing already says, at no extra cost).
"""

from __future__ import annotations

from dropzone import errors, naming
from dropzone.transports.base import AckFile, DirEntry, Dropzone, FileDropzoneBase

__all__ = ["MAX_LISTED_ACKS", "list_ack_files"]

# A directory flooded with files must not make one poll unbounded.
MAX_LISTED_ACKS = 10_000


def list_ack_files(dropzone: Dropzone) -> list[AckFile]:
    """``ack_*`` / ``error_*`` regular files (and links) directly in ack_path, oldest first."""
    if not isinstance(dropzone, FileDropzoneBase):
        raise TypeError(f"cannot list ack files of a {type(dropzone).__name__}")
    ack_dir = dropzone.ack_path
    if not ack_dir:
        raise errors.InvalidConfigError(f"{dropzone.label}: no ack_path configured")
    found: list[AckFile] = []
    folders: list[DirEntry] = []
    for entry in dropzone._listdir(ack_dir):
        if entry.name in (naming.PROCESSED_DIR, naming.ERROR_DIR):
            folders.append(entry)
            continue
        parsed = naming.parse_ack_name(entry.name)
        if parsed is None or not (entry.stat.is_file or entry.stat.is_link):
            continue
        kind, export_filename = parsed
        if len(found) < MAX_LISTED_ACKS:
            found.append(
                AckFile(
                    name=entry.name, kind=kind, export_filename=export_filename,
                    size=entry.stat.size, mtime=entry.stat.mtime, is_link=entry.stat.is_link,
                )
            )
    if found:
        for folder in folders:
            dropzone.check_ack_folder(dropzone._join(ack_dir, folder.name), folder.stat)
    found.sort(key=lambda ack: (ack.mtime, ack.name))
    return found
