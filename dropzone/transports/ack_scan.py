"""Every ack file waiting in a dropzone's ``ack_path``, not just one export's.

``Dropzone.list_acks(filename)`` stats the two exact names of one export. To
find acks nobody waits for (an export this ledger never wrote, a duplicate
for one that has finished), the activity needs the whole directory, listed
through the transport's ``_listdir`` primitive (its own error translation).

Only names that ``naming.parse_ack_name`` accepts are returned: anything else
(``*.tmp``, hidden files, separators, control characters, non-ASCII
look-alikes) cannot be one of our acks and is never touched.
"""

from __future__ import annotations

from dropzone import errors, naming
from dropzone.transports.base import AckFile, Dropzone, FileDropzoneBase

__all__ = ["MAX_LISTED_ACKS", "list_ack_files"]

# A directory flooded with files must not make one poll unbounded.
MAX_LISTED_ACKS = 10_000


def list_ack_files(dropzone: Dropzone) -> list[AckFile]:
    """``ack_*`` / ``error_*`` regular files directly in ack_path, oldest first."""
    if not isinstance(dropzone, FileDropzoneBase):
        raise TypeError(f"cannot list ack files of a {type(dropzone).__name__}")
    ack_dir = dropzone.ack_path
    if not ack_dir:
        raise errors.InvalidConfigError(f"{dropzone.label}: no ack_path configured")
    found: list[AckFile] = []
    for entry in dropzone._listdir(ack_dir):
        parsed = naming.parse_ack_name(entry.name)
        if parsed is None or not entry.stat.is_file:
            continue
        kind, export_filename = parsed
        found.append(
            AckFile(
                name=entry.name, kind=kind, export_filename=export_filename,
                size=entry.stat.size, mtime=entry.stat.mtime,
            )
        )
        if len(found) >= MAX_LISTED_ACKS:
            break
    found.sort(key=lambda ack: (ack.mtime, ack.name))
    return found
