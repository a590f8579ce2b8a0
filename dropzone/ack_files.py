"""The ERP's answers in ack_path: finding, reading and moving ack files.

Part of the ``Dropzone`` port (``dropzone.delivery``), on the same transport
primitives. Confinement: an ack that is a link is listed as one
(``AckFile.is_link``) so that the poll refuses it unread, and ``processed/`` or
``error/`` being a link stops all ack handling before anything is read or
moved (``UnsafePathError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dropzone import errors, naming
from dropzone.transports.base import DirEntry, StatResult, Transport, check_name

__all__ = ["MAX_LISTED_ACKS", "AckFile", "AckFiles", "AckFolder"]

AckFolder = Literal["processed", "error"]
# A directory flooded with files must not make one poll unbounded.
MAX_LISTED_ACKS = 10_000
_MAX_SUFFIX = 1000


@dataclass(frozen=True)
class AckFile:
    name: str
    kind: Literal["ack", "error"]
    export_filename: str
    size: int
    mtime: float
    is_link: bool = False  # planted by the ERP: refused, never read (the size is the link's)


class AckFiles:
    """The ack half of ``Dropzone``: everything it does in ack_path."""

    _transport: Transport
    label: str
    ack_path: str | None

    def _require_ack_path(self) -> str:
        if not self.ack_path:
            raise errors.InvalidConfigError(f"{self.label}: no ack_path configured")
        return self.ack_path

    def list_acks(self, export_filename: str) -> list[AckFile]:
        """``ack_<f>`` / ``error_<f>`` present in ack_path (exact names: never ``*.tmp``)."""
        ack_dir = self._require_ack_path()
        check_name(export_filename)
        found: list[AckFile] = []
        # Stat the two exact names instead of listing: ack directories grow large.
        for kind, name in (("ack", naming.ack_name(export_filename)), ("error", naming.error_ack_name(export_filename))):
            check_name(name)
            st = self._transport.stat(self._transport.join(ack_dir, name))
            if st is not None and (st.is_file or st.is_link):
                found.append(
                    AckFile(
                        name=name, kind=kind, export_filename=export_filename, size=st.size, mtime=st.mtime,
                        is_link=st.is_link,
                    )
                )
        if found:  # only then: two more round trips on every poll would cost SFTP dearly
            for folder in (naming.PROCESSED_DIR, naming.ERROR_DIR):
                path = self._transport.join(ack_dir, folder)
                self.check_ack_folder(path, self._transport.stat(path))
        return found

    def list_all_acks(self) -> list[AckFile]:
        """Every ``ack_*`` / ``error_*`` regular file (and link) directly in ack_path, oldest first.

        ``list_acks`` stats one export's two exact names; this lists the whole
        directory, to find acks nobody waits for (an export this ledger never
        wrote, a duplicate for one that has finished). Only names that
        ``naming.parse_ack_name`` accepts are returned: anything else (``*.tmp``,
        hidden files, control characters, look-alikes) cannot be one of our acks
        and is never touched. Before any ack is returned, ``processed/`` and
        ``error/`` are checked not to be links (the listing already says).
        """
        ack_dir = self._require_ack_path()
        found: list[AckFile] = []
        folders: list[DirEntry] = []
        for entry in self._transport.listdir(ack_dir):
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
                self.check_ack_folder(self._transport.join(ack_dir, folder.name), folder.stat)
        found.sort(key=lambda ack: (ack.mtime, ack.name))
        return found

    def check_ack_folder(self, path: str, st: StatResult | None) -> None:
        """``processed/`` or ``error/`` must be a real directory (or absent, created on the
        first move) before any ack is read: a link would make ``move_ack`` write wherever
        it points. Raises UnsafePathError / MissingDirectoryError."""
        if st is None or (st.is_dir and not st.is_link):
            return
        if st.is_link:
            raise errors.UnsafePathError(
                f"{self.label}: {path} is a symbolic link; ack files are neither read nor moved "
                "until it is removed (links under ack_path are never followed; the worker creates the folder)",
                path=path,
            )
        raise errors.MissingDirectoryError(f"{self.label}: {path} exists and is not a directory")

    def read_ack(self, name: str, *, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes, so a caller can tell "too large"."""
        ack_dir = self._require_ack_path()
        check_name(name)
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        path = self._transport.join(ack_dir, name)
        try:
            data = self._transport.read_prefix(path, max_bytes + 1)
        except errors.UnsafePathError as exc:
            # Listed as a regular file a moment ago: the next poll sees (and refuses) the link.
            raise errors.AckNotYetAvailable(f"{exc.message}; looking again") from None
        if data is None:
            raise errors.AckNotYetAvailable(f"{self.label}: ack file {path} disappeared before it was read")
        return data

    def move_ack(self, name: str, folder: AckFolder) -> str:
        """Move into ``<ack_path>/processed|error`` (created if missing); a numeric
        suffix instead of overwriting; idempotent when retried.  Returns the new path."""
        ack_dir = self._require_ack_path()
        check_name(name)

        dirs = {"processed": naming.PROCESSED_DIR, "error": naming.ERROR_DIR}
        if folder not in dirs:
            raise ValueError(f"folder must be 'processed' or 'error', not {folder!r}")
        src = self._transport.join(ack_dir, name)
        target_dir = self._transport.join(ack_dir, check_name(dirs[folder], what="folder name"))
        self._transport.mkdir(target_dir)
        first = self._transport.join(target_dir, name)
        if self._transport.stat(src) is None:
            # A retried activity whose first try already moved the file: same result.
            if self._transport.stat(first) is not None:
                return first
            raise errors.MissingDirectoryError(f"{self.label}: ack file {src} does not exist")
        for n in range(_MAX_SUFFIX):
            candidate = first if n == 0 else self._transport.join(target_dir, check_name(f"{name}.{n}"))
            if self._transport.rename_noreplace(src, candidate):
                return candidate
        raise errors.DeliveryConflictError(f"{self.label}: no free name for {name} in {target_dir}")
