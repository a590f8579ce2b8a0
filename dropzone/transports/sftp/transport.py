"""The SFTP primitives: ``SftpTransport`` supplies what ``dropzone.transports.base.Transport`` asks for.

One session on one server (``connect.Session``), lent by a pool or opened
privately. Every request runs inside ``_sftp(action)``, which turns library
exceptions into project errors (``errors.translate``) and marks the session
broken when the connection, not the file system, failed: a broken session
fails every later request at once instead of waiting out the timeout again,
and is never given back to a pool.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import stat as stat_mod
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

import paramiko
from paramiko.sftp import SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_READ, SFTP_FLAG_TRUNC, SFTP_FLAG_WRITE

from dropzone import errors
from dropzone.connection_config import SftpConfig
from dropzone.transports.base import DirEntry, HashingLimiter, ProgressCallback, StatResult, Transport
from dropzone.transports.sftp import _paramiko
from dropzone.transports.sftp.connect import Session, connect
from dropzone.transports.sftp.errors import NOT_FOUND, SftpStatusError, translate

__all__ = ["SftpTransport"]

log = logging.getLogger(__name__)


def _stat_result(attrs: paramiko.SFTPAttributes) -> StatResult:
    mode = attrs.st_mode or 0
    return StatResult(
        size=attrs.st_size or 0,
        mtime=float(attrs.st_mtime or 0),
        is_dir=stat_mod.S_ISDIR(mode),
        is_file=stat_mod.S_ISREG(mode),
        is_link=stat_mod.S_ISLNK(mode),
    )


class SftpTransport(Transport):
    """An SFTP session.  ``connect`` opens a private connection; a pool lends one."""

    def __init__(
        self,
        config: SftpConfig,
        session: Session,
        *,
        release: Callable[[Session], None] | None = None,
    ) -> None:
        self.config = config
        self.export_path = config.export_path
        self.ack_path = config.ack_path
        self.atomic_write = config.atomic_write
        self.file_mode = config.file_mode
        self.label = session.url
        self._session: Session | None = session
        self._release = release

    @classmethod
    def connect(cls, config: SftpConfig) -> SftpTransport:
        return cls(config, connect(config))

    @property
    def _s(self) -> Session:
        if self._session is None:
            raise errors.DropzoneUnavailableError(f"{self.label}: session is closed")
        return self._session

    def server_fingerprint(self) -> str | None:
        return self._s.fingerprint

    def mark_broken(self) -> None:
        """Never reuse this connection: something may have left its SFTP stream out of sync."""
        if self._session is not None:
            self._session.broken = True

    @contextlib.contextmanager
    def _sftp(self, action: str) -> Iterator[_paramiko.SFTPClient]:
        session = self._s
        if session.broken:
            # The connection already failed (a stalled server, a timeout): another
            # request would only wait out operation_timeout again — the cleanup
            # after a stalled upload used to double the time a thread was stuck.
            raise errors.DropzoneUnavailableError(f"{session.url}: connection lost; cannot {action}")
        try:
            yield session.sftp
        except (errors.DropzoneError, _paramiko.CallerAborted):
            raise
        except Exception as exc:
            translated = translate(exc, session.url, action)
            if isinstance(translated, errors.TransientError) and not isinstance(exc, SftpStatusError):
                session.broken = True  # the connection, not the file system, failed
            raise translated from exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Anything but a project error (a bug, a cancellation raised from the progress
        # callback mid-packet) may have left the SFTP stream out of sync: never reuse it.
        if exc_type is not None and not issubclass(exc_type, errors.DropzoneError):
            self.mark_broken()
        self.close()

    def close(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if self._release is not None:
            self._release(session)
        else:
            session.close()

    # ----- primitives -----

    def join(self, directory: str, name: str) -> str:
        return posixpath.join(directory, name)

    def stat(self, path: str) -> StatResult | None:
        # lstat below the configured directories: a link the ERP planted is reported,
        # never followed (the directories themselves may be links: the operator's choice).
        follow = path in (self.export_path, self.ack_path)
        with self._sftp(f"stat {path}") as sftp:
            try:
                attrs = sftp.stat(path) if follow else sftp.lstat(path)
            except SftpStatusError as exc:
                if exc.sftp_code in NOT_FOUND:
                    return None
                raise
        return _stat_result(attrs)

    def _check_regular(self, path: str) -> bool:
        """lstat before open (SFTP has no O_NOFOLLOW): False when nothing is there."""
        st = self.stat(path)
        if st is None:
            return False
        if not st.is_file:
            what = "a symbolic link" if st.is_link else "not a regular file"
            raise errors.UnsafePathError(f"{self.label}: {path} is {what}; not read (links are never followed)")
        return True

    def listdir(self, directory: str) -> list[DirEntry]:
        with self._sftp(f"list {directory}") as sftp:
            try:
                attrs = sftp.listdir_attr(directory)
            except SftpStatusError as exc:
                if exc.sftp_code in NOT_FOUND:
                    # The translation would say "no such file"; say which directory.
                    raise errors.MissingDirectoryError(f"{self.label}: directory {directory} does not exist") from exc
                raise
        # READDIR attributes are lstat's (OpenSSH, asyncssh): links show as links.
        return [DirEntry(a.filename, _stat_result(a)) for a in attrs]

    def write_new(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        limit: int,
        exclusive: bool,
        progress: ProgressCallback | None,
    ) -> tuple[int, str]:
        session = self._s
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
        try:
            # Always exclusive first: O_EXCL never follows a link, and the server's
            # open(2) follows one otherwise (SFTP has no O_NOFOLLOW). No extra round
            # trip unless the name is taken.
            with self._sftp(f"create {path}") as sftp:
                handle = sftp.open_handle(path, flags, self.file_mode)
        except errors.DropzoneError:
            # OpenSSH reports an exclusive create on an existing file as plain "Failure".
            st = None if session.broken else self.stat(path)
            if st is None:
                raise
            if exclusive:
                raise errors.DeliveryConflictError(f"{self.label}: {path} already exists; not overwriting") from None
            if not st.is_file:
                raise errors.UnsafePathError(
                    f"{self.label}: {path} exists and is {'a symbolic link' if st.is_link else 'not a regular file'}; "
                    "not followed, not overwritten"
                ) from None
            with self._sftp(f"create {path}") as sftp:  # our own earlier file: truncate it
                handle = sftp.open_handle(path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC, self.file_mode)
        hasher = HashingLimiter(limit, self.label, path, progress)
        closed = False
        ok = False
        try:
            with self._sftp(f"write {path}") as sftp:
                mode_error = sftp.write_pipelined(
                    handle, chunks, hasher, request_size=session.write_size, file_mode=self.file_mode
                )
                if mode_error is not None:
                    log.warning("%s: could not set mode %o on %s: %s", self.label, self.file_mode, path, mode_error)
                if session.fsync:
                    sftp.extended("fsync@openssh.com", handle)
                closed = True  # even if CLOSE fails, the handle is gone
                sftp.close_handle(handle)
            ok = True
        except _paramiko.CallerAborted as aborted:
            # A cancellation from the progress callback, or a failing source: the
            # stream is in step, so the .tmp is removed below and the caller sees
            # its own exception, as from every other transport.
            raise aborted.original from None
        finally:
            if not ok and not session.broken:
                with contextlib.suppress(Exception):
                    if not closed:
                        session.sftp.close_handle(handle)
                with contextlib.suppress(Exception):
                    session.sftp.remove(path)
        return hasher.count, hasher.hexdigest()

    def iter_file(self, path: str, chunk_size: int) -> Iterator[bytes]:
        session = self._s
        self._check_regular(path)
        with self._sftp(f"open {path}") as sftp:
            handle = sftp.open_handle(path, SFTP_FLAG_READ, None)
        try:
            with self._sftp(f"read {path}") as sftp:
                yield from sftp.read_pipelined(handle, session.read_size)
        finally:
            if not session.broken:
                with contextlib.suppress(Exception):
                    session.sftp.close_handle(handle)

    def read_prefix(self, path: str, max_bytes: int) -> bytes | None:
        session = self._s
        if not self._check_regular(path):
            return None
        with self._sftp(f"open {path}") as sftp:
            try:
                handle = sftp.open_handle(path, SFTP_FLAG_READ, None)
            except SftpStatusError as exc:
                if exc.sftp_code in NOT_FOUND:
                    return None
                raise
        out = bytearray()
        try:
            with self._sftp(f"read {path}") as sftp:
                while len(out) < max_bytes:
                    data = sftp.read_at(handle, len(out), min(max_bytes - len(out), session.read_size))
                    if not data:
                        break
                    out += data
        finally:
            if not session.broken:
                with contextlib.suppress(Exception):
                    session.sftp.close_handle(handle)
        return bytes(out)

    def publish(self, tmp: str, final: str) -> bool:
        session = self._s
        if session.posix_rename:
            with self._sftp(f"rename {tmp} to {final}") as sftp:
                sftp.extended("posix-rename@openssh.com", tmp, final)
            return True
        # Without posix-rename the plain SFTP rename refuses an existing target, which is
        # the safe direction: the caller re-checks what is there.
        return self.rename_noreplace(tmp, final)

    def rename_noreplace(self, src: str, dst: str) -> bool:
        try:
            with self._sftp(f"rename {src} to {dst}") as sftp:
                sftp.rename_request(src, dst)
            return True
        except errors.DropzoneError:
            if self._s.broken:
                raise
            if self.stat(dst) is not None:
                return False
            raise

    def remove(self, path: str) -> None:
        with self._sftp(f"remove {path}") as sftp:
            try:
                sftp.remove(path)
            except SftpStatusError as exc:
                if exc.sftp_code not in NOT_FOUND:
                    raise

    def mkdir(self, path: str) -> None:
        try:
            with self._sftp(f"create directory {path}") as sftp:
                sftp.mkdir(path, 0o777)
        except errors.DropzoneError:
            if self._s.broken:
                raise
            st = self.stat(path)
            if st is None:
                raise
            if st.is_link:
                raise errors.UnsafePathError(
                    f"{self.label}: {path} is a symbolic link; links under export_path and ack_path are "
                    "never followed (remove it; the worker creates processed/ and error/ itself)",
                    path=path,
                ) from None
            if not st.is_dir:
                raise errors.MissingDirectoryError(f"{self.label}: {path} exists and is not a directory") from None
