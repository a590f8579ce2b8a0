"""What every dropzone transport supplies: file primitives, and the names they accept.

A transport (``filesystem``, ``sftp/``, ``ftps/``) is one session on one
dropzone that can stat, list, write, read, rename and remove files. It
converts its library's exceptions into ``dropzone.errors`` inside those
primitives (one table and one translate function per adapter), so the one
delivery algorithm (``dropzone.delivery``) only ever sees project errors.

Confinement: every path is ``join(<configured directory>, name)`` where
``name`` passed ``naming.is_safe_filename`` first (``[A-Za-z0-9._-]``, not
starting with ``.``), so no name can climb out of the configured directories.
Nor can a link the ERP planted: ``stat`` never follows one below them.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

from dropzone import errors, naming

__all__ = [
    "DirEntry",
    "HashingLimiter",
    "ProgressCallback",
    "StatResult",
    "Transport",
    "check_name",
    "is_export_name",
]

ProgressCallback = Callable[[int], None]

# What a complete export file is called (naming.export_filename); ``*.tmp`` never matches.
_EXPORT_NAME = re.compile(r"sales_order_[A-Za-z0-9_-]+\.json")


def is_export_name(name: str) -> bool:
    """A complete export file's name (``sales_order_*.json``), safe to join to a directory."""
    return _EXPORT_NAME.fullmatch(name) is not None and naming.is_safe_filename(name)


def check_name(name: str, *, what: str = "file name") -> str:
    """Refuse any name that could escape its directory (raises InvalidConfigError)."""
    if not isinstance(name, str) or not naming.is_safe_filename(name):
        raise errors.InvalidConfigError(f"unsafe {what} {name!r}: only [A-Za-z0-9._-], not starting with '.'")
    return name


@dataclass(frozen=True)
class StatResult:
    size: int
    mtime: float
    is_dir: bool
    is_file: bool
    is_link: bool = False


@dataclass(frozen=True)
class DirEntry:
    """One name in a directory listing, with what ``stat`` would say about it."""

    name: str
    stat: StatResult


class Transport(abc.ABC):
    """What a transport supplies: one open session on one dropzone, as file primitives.

    No algorithm lives here or in a transport: ``dropzone.delivery.Dropzone``
    builds delivery, acks and probing on these, and the ERP side
    (``starter.erp_side``) builds its reads and writes on them too.
    """

    export_path: str
    ack_path: str | None
    atomic_write: bool
    file_mode: int
    label: str  # "sftp://user@host:port" or "file:///dir" — for messages, never a secret

    # ----- primitives: every one raises only dropzone.errors -----

    @abc.abstractmethod
    def join(self, directory: str, name: str) -> str: ...

    @abc.abstractmethod
    def stat(self, path: str) -> StatResult | None:
        """None when nothing exists at ``path``; a link is reported as a link, not
        followed (only export_path and ack_path themselves are followed)."""

    @abc.abstractmethod
    def write_new(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        limit: int,
        exclusive: bool,
        progress: ProgressCallback | None,
    ) -> tuple[int, str]:
        """Create/truncate ``path`` (or create exclusively), write, apply file_mode, make durable.

        Returns (bytes written, sha256 hex).  Raises IntegrityError as soon as
        more than ``limit`` bytes arrive, DeliveryConflictError when ``exclusive``
        and the file exists.  On any failure after creating the file it removes
        that file (best effort) before raising.
        """

    @abc.abstractmethod
    def iter_file(self, path: str, chunk_size: int) -> Iterator[bytes]:
        """The bytes of the regular file ``path``; UnsafePathError for a link or a special file."""

    @abc.abstractmethod
    def read_prefix(self, path: str, max_bytes: int) -> bytes | None:
        """At most ``max_bytes`` bytes; None when the file does not exist;
        UnsafePathError for a link or a special file."""

    @abc.abstractmethod
    def publish(self, tmp: str, final: str) -> bool:
        """Atomically move tmp to final.  False if the transport could only do a
        non-replacing rename and ``final`` appeared meanwhile (tmp left in place)."""

    @abc.abstractmethod
    def rename_noreplace(self, src: str, dst: str) -> bool:
        """Rename without ever overwriting: False when ``dst`` exists."""

    @abc.abstractmethod
    def remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """Create the directory; fine if it already exists."""

    @abc.abstractmethod
    def listdir(self, directory: str) -> list[DirEntry]:
        """Every entry of ``directory`` except ``.``/``..`` (no symlinks followed);
        MissingDirectoryError when it does not exist."""

    def server_fingerprint(self) -> str | None:
        """The server's identity as pinned (SFTP: host key; FTPS: certificate), if any."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HashingLimiter:
    """Hashes and counts chunks on their way to the writer; stops past ``limit`` bytes."""

    def __init__(self, limit: int, label: str, path: str, progress: ProgressCallback | None) -> None:
        self.limit = limit
        self.count = 0
        self._h = hashlib.sha256()
        self._label = label
        self._path = path
        self._progress = progress

    def feed(self, chunk: bytes) -> bytes:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError("chunks must be bytes")
        self.count += len(chunk)
        if self.count > self.limit:
            raise errors.IntegrityError(
                f"{self._label}: {self._path}: source yielded more than the expected {self.limit} bytes"
            )
        self._h.update(chunk)
        return bytes(chunk) if not isinstance(chunk, bytes) else chunk

    def done(self, written: int) -> None:
        if self._progress is not None:
            self._progress(written)

    def hexdigest(self) -> str:
        return self._h.hexdigest()
