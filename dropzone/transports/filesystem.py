"""Filesystem dropzone: a local or mounted (NFS/SMB) directory.

Durability: the temporary file is fsynced before the rename and the directory
after it, so a crash never leaves the final name pointing at missing bytes.
Every ``OSError`` is translated in ``_translate`` through ``_ERRNO_MAP`` — the only place.

Links: the ERP can write into export_path and ack_path, so it can plant
symbolic links there (``error_<file>`` pointing at a secret, ``processed``
pointing at another directory). Nothing below those two directories is ever
followed: each operation opens the configured directory, walks down to the
parent with ``O_NOFOLLOW`` one component at a time, and then works on the last
name relative to that directory descriptor (``dir_fd=``, ``lstat``,
``O_NOFOLLOW`` + ``fstat``). The configured directories themselves may be links
(a symlinked share is the operator's choice).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
from collections.abc import Iterable, Iterator

from dropzone import errors
from dropzone.connection_config import FilesystemConfig
from dropzone.transports.base import (
    DirEntry,
    Transport,
    HashingLimiter,
    ProgressCallback,
    StatResult,
)

__all__ = ["FilesystemTransport"]

# What each errno means, in one table (``_translate`` is the only reader). Anything
# not listed (EIO, ESTALE, ETIMEDOUT, EHOSTDOWN …: a mount in trouble) is worth
# retrying, like a full disk (ENOSPC, EDQUOT, EFBIG): DropzoneUnavailableError.
_ERRNO_MAP: dict[int, type[errors.DropzoneError]] = {
    errno.ENOENT: errors.MissingDirectoryError,
    errno.ENOTDIR: errors.MissingDirectoryError,
    errno.EACCES: errors.PermissionDeniedError,
    errno.EPERM: errors.PermissionDeniedError,
    errno.EROFS: errors.PermissionDeniedError,
    errno.ELOOP: errors.UnsafePathError,  # O_NOFOLLOW met a link
    errno.EEXIST: errors.DeliveryConflictError,
    errno.ENOSPC: errors.DropzoneUnavailableError,
    errno.EDQUOT: errors.DropzoneUnavailableError,
    errno.EFBIG: errors.DropzoneUnavailableError,
}
_REASONS: dict[type[errors.DropzoneError], str] = {
    errors.UnsafePathError: "it is a symbolic link; links under export_path and ack_path are never followed",
}
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO the ERP planted must not hang the worker (fstat refuses it next).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FilesystemTransport(Transport):
    def __init__(self, config: FilesystemConfig) -> None:
        self.config = config
        self.export_path = config.export_path
        self.ack_path = config.ack_path
        self.atomic_write = config.atomic_write
        self.file_mode = config.file_mode
        self.label = config.label

    # ----- the one translation point -----

    def _translate(self, exc: OSError, action: str, path: str) -> errors.DropzoneError:
        error_class = _ERRNO_MAP.get(exc.errno or 0, errors.DropzoneUnavailableError)
        if error_class is errors.DeliveryConflictError:
            return error_class(f"{self.label}: {path} already exists; not overwriting")
        reason = _REASONS.get(error_class) or (os.strerror(exc.errno) if exc.errno else type(exc).__name__)
        return error_class(f"{self.label}: cannot {action} {path}: {reason}")

    @contextlib.contextmanager
    def _os(self, action: str, path: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._translate(exc, action, path) from exc

    # ----- directories, never through a link -----

    def _root_of(self, directory: str) -> tuple[str, list[str]]:
        """(configured directory, components below it) for ``directory``."""
        directory = os.path.normpath(directory)
        roots = sorted({r for r in (self.export_path, self.ack_path) if r}, key=len, reverse=True)
        for root in roots:
            if directory == root:
                return root, []
            if directory.startswith(root.rstrip(os.sep) + os.sep):
                return root, directory[len(root.rstrip(os.sep)) + 1 :].split(os.sep)
        raise ValueError(f"{directory!r} is not below export_path or ack_path")

    def _open_dir(self, directory: str) -> int:
        """A descriptor of ``directory``; raises OSError, or UnsafePathError for a link."""
        root, parts = self._root_of(directory)
        fd = os.open(root, _DIR_FLAGS)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except NotADirectoryError:  # what O_DIRECTORY | O_NOFOLLOW says about a link
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if stat_mod.S_ISLNK(st.st_mode):
                        raise self._link_refused(os.path.join(root, *parts[:depth])) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _link_refused(self, path: str) -> errors.UnsafePathError:
        return errors.UnsafePathError(
            f"{self.label}: {path} is a symbolic link; links under export_path and ack_path are "
            "never followed (remove it; the worker creates processed/ and error/ itself)",
            path=path,
        )

    @contextlib.contextmanager
    def _at(self, path: str, action: str) -> Iterator[tuple[int, str]]:
        """(descriptor of the parent directory, last name) of ``path``, translated errors."""
        directory, name = os.path.split(os.path.normpath(path))
        with self._os(action, path):
            fd = self._open_dir(directory)
        try:
            yield fd, name
        finally:
            os.close(fd)

    # ----- primitives -----

    def join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name)

    def stat(self, path: str) -> StatResult | None:
        with self._os("stat", path):
            try:
                if os.path.normpath(path) in (self.export_path, self.ack_path):
                    return self._stat_result(os.stat(path))  # the operator's own directory
                directory, name = os.path.split(os.path.normpath(path))
                fd = self._open_dir(directory)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                return None
        return self._stat_result(st)

    @staticmethod
    def _stat_result(st: os.stat_result) -> StatResult:
        return StatResult(
            size=st.st_size,
            mtime=st.st_mtime,
            is_dir=stat_mod.S_ISDIR(st.st_mode),
            is_file=stat_mod.S_ISREG(st.st_mode),
            is_link=stat_mod.S_ISLNK(st.st_mode),
        )

    def listdir(self, directory: str) -> list[DirEntry]:
        entries: list[DirEntry] = []
        with self._os("list", directory):
            fd = self._open_dir(directory)
            try:
                with os.scandir(fd) as it:
                    for entry in it:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:  # removed or moved meanwhile
                            continue
                        entries.append(DirEntry(entry.name, self._stat_result(st)))
            finally:
                os.close(fd)
        return entries

    def write_new(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        limit: int,
        exclusive: bool,
        progress: ProgressCallback | None,
    ) -> tuple[int, str]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_EXCL if exclusive else os.O_TRUNC)
        with self._at(path, "create") as (dir_fd, name):
            with self._os("create", path):
                fd = os.open(name, flags, self.file_mode, dir_fd=dir_fd)
            hasher = HashingLimiter(limit, self.label, path, progress)
            ok = False
            try:
                with self._os("write", path):
                    os.fchmod(fd, self.file_mode)  # os.open's mode is filtered by the umask
                    for chunk in chunks:
                        view = memoryview(hasher.feed(chunk))
                        while view:
                            n = os.write(fd, view)
                            view = view[n:]
                        hasher.done(hasher.count)
                    os.fsync(fd)
                ok = True
            finally:
                try:
                    os.close(fd)
                except OSError as exc:
                    if ok:  # NFS reports some write errors only at close
                        ok = False
                        raise self._translate(exc, "close", path) from exc
                finally:
                    if not ok:
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dir_fd)
        return hasher.count, hasher.hexdigest()

    def _open_regular(self, dir_fd: int, name: str, path: str) -> int:
        """A read descriptor of ``name`` if it is a regular file (never through a link)."""
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise errors.UnsafePathError(f"{self.label}: {path} is not a regular file; not read")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def iter_file(self, path: str, chunk_size: int) -> Iterator[bytes]:
        with self._at(path, "read") as (dir_fd, name), self._os("read", path):
            fd = self._open_regular(dir_fd, name, path)
            try:
                while block := os.read(fd, chunk_size):
                    yield block
            finally:
                os.close(fd)

    def read_prefix(self, path: str, max_bytes: int) -> bytes | None:
        with self._at(path, "read") as (dir_fd, name), self._os("read", path):
            try:
                fd = self._open_regular(dir_fd, name, path)
            except FileNotFoundError:
                return None
            try:
                out = bytearray()
                while len(out) < max_bytes and (block := os.read(fd, max_bytes - len(out))):
                    out += block
                return bytes(out)
            finally:
                os.close(fd)

    def publish(self, tmp: str, final: str) -> bool:
        with self._at(tmp, "rename to " + final) as (src_fd, src), self._at(final, "rename to") as (dst_fd, dst):
            with self._os("rename to " + final, tmp):
                os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            self._fsync_fd(dst_fd, os.path.dirname(final))
        return True

    def rename_noreplace(self, src: str, dst: str) -> bool:
        # link() fails with EEXIST instead of replacing: no window where a racing
        # file could be overwritten.  Filesystems without hard links fall back to
        # check-then-rename.  A planted link is moved as the link, never followed.
        with self._at(src, "move to " + dst) as (src_fd, src_name), self._at(dst, "move") as (dst_fd, dst_name):
            try:
                os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARDLINKS:
                    raise self._translate(exc, "move to " + dst, src) from exc
                with self._os("move to " + dst, src):
                    try:
                        os.stat(dst_name, dir_fd=dst_fd, follow_symlinks=False)
                        return False
                    except FileNotFoundError:
                        pass
                    os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            else:
                with self._os("remove", src):
                    os.unlink(src_name, dir_fd=src_fd)
            self._fsync_fd(dst_fd, os.path.dirname(dst))
            self._fsync_fd(src_fd, os.path.dirname(src))
        return True

    def remove(self, path: str) -> None:
        with self._at(path, "remove") as (dir_fd, name):
            with self._os("remove", path), contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)

    def mkdir(self, path: str) -> None:
        with self._at(path, "create directory") as (dir_fd, name):
            with self._os("create directory", path):
                try:
                    os.mkdir(name, 0o777, dir_fd=dir_fd)  # the umask decides, like any other tool
                except FileExistsError:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if stat_mod.S_ISLNK(st.st_mode):
                        raise self._link_refused(path) from None
                    if not stat_mod.S_ISDIR(st.st_mode):
                        raise errors.MissingDirectoryError(
                            f"{self.label}: {path} exists and is not a directory"
                        ) from None
                    return
            self._fsync_fd(dir_fd, os.path.dirname(path))

    def _fsync_fd(self, fd: int, directory: str) -> None:
        with self._os("sync directory", directory):
            try:
                os.fsync(fd)
            except OSError as exc:
                # Some filesystems (and SMB mounts) do not support fsync on a directory.
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
                    raise

    def close(self) -> None:
        pass
