"""One interface for every dropzone, and the delivery algorithm they share.

``Dropzone`` is the port the activities use.  ``FileDropzoneBase`` implements
the whole contract once (DESIGN section 4: idempotent, atomic delivery; ack
listing, reading and moving; probing) on top of a few primitives that each
transport provides (stat, write, hash, rename, remove, mkdir, read).  The
transports convert their library's exceptions into ``dropzone.errors`` inside
those primitives — one translation function per adapter — so the algorithm
here only ever sees project errors.

Confinement: every path is ``join(<configured directory>, name)`` where
``name`` passed ``naming.is_safe_filename`` first (``[A-Za-z0-9._-]``, not
starting with ``.``), so no name can climb out of the configured directories.
Nor can a link the ERP planted: ``_stat`` never follows one below them, an ack
that is a link is listed as one (``AckFile.is_link``) so the poll refuses it
unread, and ``processed/`` or ``error/`` being a link stops all ack handling
before anything is read or moved (``UnsafePathError``).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

from dropzone import errors, naming

__all__ = [
    "AckFile",
    "AckFolder",
    "DeliveryResult",
    "DirEntry",
    "Dropzone",
    "ErpSide",
    "FileDropzoneBase",
    "ProbeResult",
    "check_name",
    "is_export_name",
]

AckFolder = Literal["processed", "error"]
ProgressCallback = Callable[[int], None]

HASH_CHUNK = 1024 * 1024
PROBE_BODY = b"orderflow-dropzone probe: safe to delete\n"
_MAX_SUFFIX = 1000
# What a complete export file is called (naming.export_filename); ``*.tmp`` never matches.
_EXPORT_NAME = re.compile(r"sales_order_[A-Za-z0-9_-]+\.json")
# A moved ack that met a name already taken got a numeric suffix (move_ack).
_MOVED_SUFFIX = re.compile(r"\.\d+$")


@dataclass(frozen=True)
class DeliveryResult:
    path: str
    already_present: bool
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class AckFile:
    name: str
    kind: Literal["ack", "error"]
    export_filename: str
    size: int
    mtime: float
    is_link: bool = False  # planted by the ERP: refused, never read (the size is the link's)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    host_key_fingerprint: str | None = None


@runtime_checkable
class Dropzone(Protocol):
    """An open session on one dropzone: a context manager, used by one thread at a time."""

    def deliver(
        self,
        filename: str,
        chunks: Iterable[bytes],
        *,
        size: int,
        sha256: str,
        token: str,
        progress: ProgressCallback | None = None,
        attempt: int = 1,
    ) -> DeliveryResult:
        """Idempotent, atomic delivery of ``size`` bytes hashing to ``sha256``.

        The final name already holding the same bytes → ``already_present=True``;
        different bytes → ``DeliveryConflictError``; bytes that do not match
        ``size``/``sha256`` → ``IntegrityError`` and nothing left behind.
        ``token`` ([a-z0-9]{1,32}) makes the ``.tmp`` name unique per execution;
        ``progress`` gets the cumulative byte count after every chunk (and may
        raise, e.g. a cancellation, to stop the transfer).  ``attempt`` > 1 (a
        retry) also removes the ``.tmp`` files earlier attempts left behind
        (``naming.execution_token``).
        """
        ...

    def list_acks(self, export_filename: str) -> list[AckFile]:
        """``ack_<f>`` / ``error_<f>`` present in ack_path (exact names: never ``*.tmp``)."""
        ...

    def read_ack(self, name: str, *, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes, so a caller can tell "too large"."""
        ...

    def move_ack(self, name: str, folder: AckFolder) -> str:
        """Move into ``<ack_path>/processed|error`` (created if missing); a numeric
        suffix instead of overwriting; idempotent when retried.  Returns the new path."""
        ...

    def probe(self) -> ProbeResult:
        """Write, read back and delete a ``*.tmp`` probe file; check ack_path exists."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Dropzone: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class ErpSide(Protocol):
    """What the ERP does with a dropzone: the other end of ``Dropzone``.

    Used by the ERP simulator (``dropzone erp-sim``) and by tooling that plays
    the ERP against a staging dropzone; the export pipeline never calls it.
    """

    def list_exports(self) -> list[str]:
        """Complete export files (``sales_order_*.json``) in export_path, sorted; never ``*.tmp``."""
        ...

    def read_export(self, name: str, *, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes, so a caller can tell "too large"."""
        ...

    def answered_exports(self) -> set[str]:
        """Export file names that have an ``ack_``/``error_`` file in ack_path or in
        its ``processed/`` and ``error/`` folders (where the worker moves them)."""
        ...

    def write_ack(self, name: str, body: bytes) -> str:
        """Write ``<ack_path>/<name>`` atomically (hidden temp file, then a rename that
        never replaces); DeliveryConflictError when the name exists.  Returns the path."""
        ...


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
    """One name in a directory listing, with what ``_stat`` would say about it."""

    name: str
    stat: StatResult


class FileDropzoneBase(abc.ABC):
    """The delivery/ack algorithm over transport primitives (see module docstring)."""

    export_path: str
    ack_path: str | None
    atomic_write: bool
    file_mode: int
    label: str  # "sftp://user@host:port" or "file:///dir" — for messages, never a secret

    # ----- primitives: every one raises only dropzone.errors -----

    @abc.abstractmethod
    def _join(self, directory: str, name: str) -> str: ...

    @abc.abstractmethod
    def _stat(self, path: str) -> StatResult | None:
        """None when nothing exists at ``path``; a link is reported as a link, not
        followed (only export_path and ack_path themselves are followed)."""

    @abc.abstractmethod
    def _write_new(
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
    def _iter_file(self, path: str, chunk_size: int) -> Iterator[bytes]:
        """The bytes of the regular file ``path``; UnsafePathError for a link or a special file."""

    @abc.abstractmethod
    def _read_prefix(self, path: str, max_bytes: int) -> bytes | None:
        """At most ``max_bytes`` bytes; None when the file does not exist;
        UnsafePathError for a link or a special file."""

    @abc.abstractmethod
    def _publish(self, tmp: str, final: str) -> bool:
        """Atomically move tmp to final.  False if the transport could only do a
        non-replacing rename and ``final`` appeared meanwhile (tmp left in place)."""

    @abc.abstractmethod
    def _rename_noreplace(self, src: str, dst: str) -> bool:
        """Rename without ever overwriting: False when ``dst`` exists."""

    @abc.abstractmethod
    def _remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def _mkdir(self, path: str) -> None:
        """Create the directory; fine if it already exists."""

    def _listdir(self, directory: str) -> list[DirEntry]:
        """Every entry of ``directory`` except ``.``/``..`` (no symlinks followed);
        MissingDirectoryError when it does not exist.  Not abstract, so that a
        transport without it still delivers; the ERP side needs it."""
        raise NotImplementedError(f"{type(self).__name__} cannot list directories")

    def _host_key_fingerprint(self) -> str | None:
        return None

    # ----- the contract -----

    def deliver(
        self,
        filename: str,
        chunks: Iterable[bytes],
        *,
        size: int,
        sha256: str,
        token: str,
        progress: ProgressCallback | None = None,
        attempt: int = 1,
    ) -> DeliveryResult:
        result = self._deliver(filename, chunks, size=size, sha256=sha256, token=token, progress=progress)
        if attempt > 1:
            # Only a retry can find leftovers: a worker killed mid-upload leaves its
            # .tmp behind. Listing export_path costs a round trip, so first
            # attempts (nearly every delivery) skip it.
            self._remove_superseded_tmps(filename, attempt)
        return result

    def _deliver(
        self,
        filename: str,
        chunks: Iterable[bytes],
        *,
        size: int,
        sha256: str,
        token: str,
        progress: ProgressCallback | None,
    ) -> DeliveryResult:
        check_name(filename)
        sha256 = sha256.lower()
        if size < 0:
            raise ValueError("size must be >= 0")
        final = self._join(self.export_path, filename)

        present = self._check_existing(final, size=size, sha256=sha256)
        if present is not None:
            return present

        if not self.atomic_write:
            return self._deliver_direct(final, chunks, size=size, sha256=sha256, progress=progress)

        tmp_name = check_name(naming.tmp_name(filename, token), what="temporary file name")
        tmp = self._join(self.export_path, tmp_name)
        published = False
        try:
            written, digest = self._write_new(tmp, chunks, limit=size, exclusive=False, progress=progress)
            self._verify_written(tmp, written=written, digest=digest, size=size, sha256=sha256)
            published = self._publish(tmp, final)
            if not published:
                # Only a non-replacing rename was available and the final name appeared
                # meanwhile (a racing execution): judge it exactly like step 1.
                present = self._check_existing(final, size=size, sha256=sha256)
                if present is None:  # vanished again: nothing sensible to do but retry
                    raise errors.DropzoneUnavailableError(
                        f"{self.label}: rename of {tmp} to {final} failed; will retry"
                    )
                return present
        finally:
            if not published:
                self._remove_quietly(tmp)
        return DeliveryResult(path=final, already_present=False, size_bytes=size, sha256=sha256)

    def _remove_superseded_tmps(self, filename: str, attempt: int) -> None:
        """Remove ``.tmp`` files of ``filename`` written by earlier attempts.

        Runs once the final file is complete, so nothing a reader could want is
        lost. An earlier attempt still running (it timed out but was never
        told) then fails on its vanished file; Temporal already ignores its
        result. A newer attempt's file is never touched. Housekeeping only:
        a failure here must not fail the delivery that just succeeded.
        """
        try:
            entries = self._listdir(self.export_path)
        except (errors.DropzoneError, NotImplementedError):
            return
        for entry in entries:
            written_by = naming.superseded_tmp_attempt(entry.name, filename)
            if written_by is not None and written_by < attempt and entry.stat.is_file:
                self._remove_quietly(self._join(self.export_path, entry.name))

    def _deliver_direct(
        self,
        final: str,
        chunks: Iterable[bytes],
        *,
        size: int,
        sha256: str,
        progress: ProgressCallback | None,
    ) -> DeliveryResult:
        # atomic_write=False is unsafe by design (the ERP may read a partial file);
        # we still create exclusively, so the only file we ever remove is our own
        # (_write_new removes what it created when the write itself fails).
        try:
            written, digest = self._write_new(final, chunks, limit=size, exclusive=True, progress=progress)
        except errors.DeliveryConflictError:
            present = self._check_existing(final, size=size, sha256=sha256)
            if present is None:
                raise
            return present
        try:
            self._verify_written(final, written=written, digest=digest, size=size, sha256=sha256)
        except errors.IntegrityError:
            self._remove_quietly(final)
            raise
        return DeliveryResult(path=final, already_present=False, size_bytes=size, sha256=sha256)

    def _verify_written(self, path: str, *, written: int, digest: str, size: int, sha256: str) -> None:
        st = self._stat(path)
        actual = st.size if st is not None else -1
        if written != size or actual != size:
            raise errors.IntegrityError(
                f"{self.label}: {path}: wrote {written} bytes, file has {actual}, expected {size}"
            )
        if digest != sha256:
            raise errors.IntegrityError(f"{self.label}: {path}: sha256 {digest} differs from expected {sha256}")

    def _check_existing(self, final: str, *, size: int, sha256: str) -> DeliveryResult | None:
        st = self._stat(final)
        if st is None:
            return None
        if st.is_link:
            raise errors.UnsafePathError(f"{self.label}: {final} exists and is a symbolic link; not followed")
        if not st.is_file:
            raise errors.DeliveryConflictError(f"{self.label}: {final} exists and is not a regular file")
        if st.size != size:
            raise errors.DeliveryConflictError(
                f"{self.label}: {final} already exists with different content "
                f"({st.size} bytes, expected {size}); not overwriting"
            )
        h = hashlib.sha256()
        for block in self._iter_file(final, HASH_CHUNK):
            h.update(block)
        if h.hexdigest() != sha256:
            raise errors.DeliveryConflictError(
                f"{self.label}: {final} already exists with different content "
                f"(sha256 {h.hexdigest()}, expected {sha256}); not overwriting"
            )
        return DeliveryResult(path=final, already_present=True, size_bytes=size, sha256=sha256)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(errors.DropzoneError):
            self._remove(path)

    # ----- acks -----

    def _require_ack_path(self) -> str:
        if not self.ack_path:
            raise errors.InvalidConfigError(f"{self.label}: no ack_path configured")
        return self.ack_path

    def list_acks(self, export_filename: str) -> list[AckFile]:
        ack_dir = self._require_ack_path()
        check_name(export_filename)
        found: list[AckFile] = []
        # Stat the two exact names instead of listing: ack directories grow large.
        for kind, name in (("ack", naming.ack_name(export_filename)), ("error", naming.error_ack_name(export_filename))):
            check_name(name)
            st = self._stat(self._join(ack_dir, name))
            if st is not None and (st.is_file or st.is_link):
                found.append(
                    AckFile(
                        name=name, kind=kind, export_filename=export_filename, size=st.size, mtime=st.mtime,
                        is_link=st.is_link,
                    )
                )
        if found:  # only then: two more round trips on every poll would cost SFTP dearly
            for folder in (naming.PROCESSED_DIR, naming.ERROR_DIR):
                path = self._join(ack_dir, folder)
                self.check_ack_folder(path, self._stat(path))
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
        ack_dir = self._require_ack_path()
        check_name(name)
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        path = self._join(ack_dir, name)
        try:
            data = self._read_prefix(path, max_bytes + 1)
        except errors.UnsafePathError as exc:
            # Listed as a regular file a moment ago: the next poll sees (and refuses) the link.
            raise errors.AckNotYetAvailable(f"{exc.message}; looking again") from None
        if data is None:
            raise errors.AckNotYetAvailable(f"{self.label}: ack file {path} disappeared before it was read")
        return data

    def move_ack(self, name: str, folder: AckFolder) -> str:
        ack_dir = self._require_ack_path()
        check_name(name)

        dirs = {"processed": naming.PROCESSED_DIR, "error": naming.ERROR_DIR}
        if folder not in dirs:
            raise ValueError(f"folder must be 'processed' or 'error', not {folder!r}")
        src = self._join(ack_dir, name)
        target_dir = self._join(ack_dir, check_name(dirs[folder], what="folder name"))
        self._mkdir(target_dir)
        first = self._join(target_dir, name)
        if self._stat(src) is None:
            # A retried activity whose first try already moved the file: same result.
            if self._stat(first) is not None:
                return first
            raise errors.MissingDirectoryError(f"{self.label}: ack file {src} does not exist")
        for n in range(_MAX_SUFFIX):
            candidate = first if n == 0 else self._join(target_dir, check_name(f"{name}.{n}"))
            if self._rename_noreplace(src, candidate):
                return candidate
        raise errors.DeliveryConflictError(f"{self.label}: no free name for {name} in {target_dir}")

    # ----- the ERP's side (ErpSide): simulators and staging tools, never the pipeline -----

    def list_exports(self) -> list[str]:
        return sorted(
            entry.name
            for entry in self._listdir(self.export_path)
            if entry.stat.is_file and is_export_name(entry.name)
        )

    def read_export(self, name: str, *, max_bytes: int) -> bytes:
        if not is_export_name(name):
            raise errors.InvalidConfigError(f"{self.label}: {name!r} is not an export file name")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        path = self._join(self.export_path, name)
        data = self._read_prefix(path, max_bytes + 1)
        if data is None:
            raise errors.MissingDirectoryError(f"{self.label}: export file {path} does not exist")
        return data

    def answered_exports(self) -> set[str]:
        ack_dir = self._require_ack_path()

        answered: set[str] = set()
        for folder in (None, naming.PROCESSED_DIR, naming.ERROR_DIR):
            directory = ack_dir if folder is None else self._join(ack_dir, folder)
            if folder is not None:
                st = self._stat(directory)
                if st is None or not st.is_dir:
                    continue  # created by the worker on its first move
            for entry in self._listdir(directory):
                name = entry.name if folder is None else _MOVED_SUFFIX.sub("", entry.name)
                parsed = naming.parse_ack_name(name)
                if parsed is not None and entry.stat.is_file:
                    answered.add(parsed[1])
        return answered

    def write_ack(self, name: str, body: bytes) -> str:
        ack_dir = self._require_ack_path()
        check_name(name, what="ack file name")
        if naming.parse_ack_name(name) is None:
            raise errors.InvalidConfigError(f"{self.label}: {name!r} is not an ack_/error_ file name")
        final = self._join(ack_dir, name)
        # Hidden and ending in .tmp: the ack poller stats exact names, and people listing
        # the directory do not see half-written files.  Built from checked parts only.
        tmp = self._join(ack_dir, f".{name}.{uuid.uuid4().hex}.tmp")
        published = False
        try:
            written, digest = self._write_new(tmp, [body], limit=len(body), exclusive=True, progress=None)
            self._verify_written(
                tmp, written=written, digest=digest, size=len(body), sha256=hashlib.sha256(body).hexdigest()
            )
            published = self._rename_noreplace(tmp, final)
        finally:
            if not published:
                self._remove_quietly(tmp)
        if not published:
            raise errors.DeliveryConflictError(f"{self.label}: {final} already exists; not overwriting")
        return final

    # ----- probe -----

    def probe(self) -> ProbeResult:
        """Write, read back and delete a ``*.tmp`` probe file (the ERP ignores ``*.tmp``).

        Permanent problems (permission denied, missing directory, …) come back as
        ``ok=False`` with the error code in ``detail``; transient ones are raised.
        """
        fingerprint = self._host_key_fingerprint()
        name = f"dropzone_probe_{uuid.uuid4().hex}.tmp"
        path = self._join(self.export_path, name)
        try:
            written = False
            try:
                self._write_new(path, [PROBE_BODY], limit=len(PROBE_BODY), exclusive=True, progress=None)
                written = True
                back = self._read_prefix(path, len(PROBE_BODY) + 1)
            finally:
                if written:
                    self._remove(path)
            if back != PROBE_BODY:
                return ProbeResult(False, f"{self.label}: probe file {path} read back different bytes", fingerprint)
            detail = f"{self.label}: wrote, read back and deleted a probe file in {self.export_path}"
            if self.ack_path:
                st = self._stat(self.ack_path)
                if st is None or not st.is_dir:
                    raise errors.MissingDirectoryError(f"{self.label}: ack_path {self.ack_path} is not a directory")
                detail += f"; ack_path {self.ack_path} exists"
            return ProbeResult(True, detail, fingerprint)
        except errors.PermanentError as exc:
            return ProbeResult(False, f"{exc.code}: {exc.message}", fingerprint)

    # ----- context manager -----

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> FileDropzoneBase:
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
