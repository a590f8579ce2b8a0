"""How a file is delivered: the one algorithm every dropzone shares, and the port.

``Dropzone`` is what the activities use (deliver an export, find, read and
move ack files, probe a connection). It is built on a ``Transport``'s
primitives (``dropzone.transports.base``), so a new kind of dropzone is one
module that supplies those, and gets exactly these guarantees:

* Idempotent: the final name already holding the same bytes is success
  (``already_present``); different bytes are a ``DeliveryConflictError``, never
  an overwrite.
* Atomic: bytes go to ``<name>.<token>.tmp`` (unique per execution), are
  checked for size and sha256, and only then published under the final name
  (a replacing rename where the server has one; otherwise a non-replacing
  one, after which a racing execution's file is judged like a present one).
* Confined: every name passes ``check_name``; the ack half of the port
  (``dropzone.ack_files``) never reads or moves through a link.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from dropzone import errors, naming
from dropzone.ack_files import AckFile, AckFiles, AckFolder
from dropzone.transports.base import (
    ProgressCallback,
    Transport,
    check_name,
    is_export_name,
)

__all__ = ["AckFile", "AckFolder", "DeliveryResult", "Dropzone", "ProbeResult"]


HASH_CHUNK = 1024 * 1024
PROBE_BODY = b"orderflow-dropzone probe: safe to delete\n"


@dataclass(frozen=True)
class DeliveryResult:
    path: str
    already_present: bool
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    host_key_fingerprint: str | None = None


class Dropzone(AckFiles):
    """An open session on one dropzone: a context manager, used by one thread at a time."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @property
    def transport(self) -> Transport:
        """The primitives underneath: for ERP-side tooling (``starter.erp_side``), never the pipeline."""
        return self._transport

    @property
    def label(self) -> str:
        return self._transport.label

    @property
    def export_path(self) -> str:
        return self._transport.export_path

    @property
    def ack_path(self) -> str | None:
        return self._transport.ack_path

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
        final = self._transport.join(self.export_path, filename)

        present = self._check_existing(final, size=size, sha256=sha256)
        if present is not None:
            return present

        if not self._transport.atomic_write:
            return self._deliver_direct(final, chunks, size=size, sha256=sha256, progress=progress)

        tmp_name = check_name(naming.tmp_name(filename, token), what="temporary file name")
        tmp = self._transport.join(self.export_path, tmp_name)
        published = False
        try:
            written, digest = self._transport.write_new(tmp, chunks, limit=size, exclusive=False, progress=progress)
            self._verify_written(tmp, written=written, digest=digest, size=size, sha256=sha256)
            published = self._transport.publish(tmp, final)
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
            entries = self._transport.listdir(self.export_path)
        except (errors.DropzoneError, NotImplementedError):
            return
        for entry in entries:
            written_by = naming.superseded_tmp_attempt(entry.name, filename)
            if written_by is not None and written_by < attempt and entry.stat.is_file:
                self._remove_quietly(self._transport.join(self.export_path, entry.name))

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
            written, digest = self._transport.write_new(final, chunks, limit=size, exclusive=True, progress=progress)
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
        st = self._transport.stat(path)
        actual = st.size if st is not None else -1
        if written != size or actual != size:
            raise errors.IntegrityError(
                f"{self.label}: {path}: wrote {written} bytes, file has {actual}, expected {size}"
            )
        if digest != sha256:
            raise errors.IntegrityError(f"{self.label}: {path}: sha256 {digest} differs from expected {sha256}")

    def _check_existing(self, final: str, *, size: int, sha256: str) -> DeliveryResult | None:
        st = self._transport.stat(final)
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
        for block in self._transport.iter_file(final, HASH_CHUNK):
            h.update(block)
        if h.hexdigest() != sha256:
            raise errors.DeliveryConflictError(
                f"{self.label}: {final} already exists with different content "
                f"(sha256 {h.hexdigest()}, expected {sha256}); not overwriting"
            )
        return DeliveryResult(path=final, already_present=True, size_bytes=size, sha256=sha256)

    def remove_stale_tmps(self, older_than: float, keep: Callable[[str], bool]) -> int:
        """Remove ``<export>.<token>.tmp`` files last written before ``older_than`` (epoch
        seconds) whose export ``keep(filename)`` does not claim; returns how many.

        A worker killed mid-upload leaves its ``.tmp`` behind, and when no retry
        follows (the run was terminated) nothing else would ever remove it.
        Links and other kinds of file are never touched.
        """
        removed = 0
        for entry in self._transport.listdir(self.export_path):
            filename = _export_of_tmp(entry.name)
            st = entry.stat
            if filename is None or not st.is_file or st.is_link or st.mtime > older_than or keep(filename):
                continue
            with contextlib.suppress(errors.DropzoneError):
                self._transport.remove(self._transport.join(self.export_path, entry.name))
                removed += 1
        return removed

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(errors.DropzoneError):
            self._transport.remove(path)

    # ----- acks -----

    # ----- probe -----

    def probe(self) -> ProbeResult:
        """Write, read back and delete a ``*.tmp`` probe file (the ERP ignores ``*.tmp``).

        Permanent problems (permission denied, missing directory, …) come back as
        ``ok=False`` with the error code in ``detail``; transient ones are raised.
        """
        fingerprint = self._transport.server_fingerprint()
        name = f"dropzone_probe_{uuid.uuid4().hex}.tmp"
        path = self._transport.join(self.export_path, name)
        try:
            written = False
            try:
                self._transport.write_new(path, [PROBE_BODY], limit=len(PROBE_BODY), exclusive=True, progress=None)
                written = True
                back = self._transport.read_prefix(path, len(PROBE_BODY) + 1)
            finally:
                if written:
                    self._transport.remove(path)
            if back != PROBE_BODY:
                return ProbeResult(False, f"{self.label}: probe file {path} read back different bytes", fingerprint)
            detail = f"{self.label}: wrote, read back and deleted a probe file in {self.export_path}"
            if self.ack_path:
                st = self._transport.stat(self.ack_path)
                if st is None or not st.is_dir:
                    raise errors.MissingDirectoryError(f"{self.label}: ack_path {self.ack_path} is not a directory")
                detail += f"; ack_path {self.ack_path} exists"
            return ProbeResult(True, detail, fingerprint)
        except errors.PermanentError as exc:
            return ProbeResult(False, f"{exc.code}: {exc.message}", fingerprint)

    # ----- context manager -----

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Dropzone:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The transport decides what an exception means for its session (SFTP:
        # anything but a project error may leave the stream out of sync).
        self._transport.__exit__(exc_type, exc, tb)


def _export_of_tmp(name: str) -> str | None:
    """The export file name of one of our ``<file>.<token>.tmp`` files; None for anything else."""
    if not name.endswith(naming.TMP_SUFFIX) or not naming.is_safe_filename(name):
        return None
    filename, _, token = name[: -len(naming.TMP_SUFFIX)].rpartition(".")
    return filename if token and is_export_name(filename) else None
