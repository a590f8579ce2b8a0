"""Filesystem dropzone: a local or mounted (NFS/SMB) directory.

Durability: the temporary file is fsynced before the rename and the directory
after it, so a crash never leaves the final name pointing at missing bytes.
Every ``OSError`` is translated in ``_translate`` — the only place.
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
    FileDropzoneBase,
    HashingLimiter,
    ProgressCallback,
    StatResult,
)

__all__ = ["FilesystemDropzone"]

_UNAVAILABLE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
_MISSING = {errno.ENOENT, errno.ENOTDIR}
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


class FilesystemDropzone(FileDropzoneBase):
    def __init__(self, config: FilesystemConfig) -> None:
        self.config = config
        self.export_path = config.export_path
        self.ack_path = config.ack_path
        self.atomic_write = config.atomic_write
        self.file_mode = config.file_mode
        self.label = f"file://{config.export_path}"

    # ----- the one translation point -----

    def _translate(self, exc: OSError, action: str, path: str) -> errors.DropzoneError:
        code = exc.errno
        reason = os.strerror(code) if code else type(exc).__name__
        where = f"{self.label}: cannot {action} {path}: {reason}"
        if code in _MISSING:
            return errors.MissingDirectoryError(where)
        if code in _PERMISSION:
            return errors.PermissionDeniedError(where)
        if code == errno.EEXIST:
            return errors.DeliveryConflictError(f"{self.label}: {path} already exists; not overwriting")
        if code in _UNAVAILABLE:
            return errors.DropzoneUnavailableError(where)
        # EIO, ESTALE, ETIMEDOUT, EHOSTDOWN …: a mount in trouble is worth retrying.
        return errors.DropzoneUnavailableError(where)

    @contextlib.contextmanager
    def _os(self, action: str, path: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._translate(exc, action, path) from exc

    # ----- primitives -----

    def _join(self, directory: str, name: str) -> str:
        return os.path.join(directory, name)

    def _stat(self, path: str) -> StatResult | None:
        with self._os("stat", path):
            try:
                st = os.stat(path)
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
        )

    def _listdir(self, directory: str) -> list[DirEntry]:
        entries: list[DirEntry] = []
        with self._os("list", directory), os.scandir(directory) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed or moved meanwhile
                    continue
                entries.append(DirEntry(entry.name, self._stat_result(st)))
        return entries

    def _write_new(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        limit: int,
        exclusive: bool,
        progress: ProgressCallback | None,
    ) -> tuple[int, str]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        with self._os("create", path):
            fd = os.open(path, flags, self.file_mode)
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
                        os.unlink(path)
        return hasher.count, hasher.hexdigest()

    def _iter_file(self, path: str, chunk_size: int) -> Iterator[bytes]:
        with self._os("read", path), open(path, "rb") as f:
            while block := f.read(chunk_size):
                yield block

    def _read_prefix(self, path: str, max_bytes: int) -> bytes | None:
        with self._os("read", path):
            try:
                with open(path, "rb") as f:
                    return f.read(max_bytes)
            except FileNotFoundError:
                return None

    def _publish(self, tmp: str, final: str) -> bool:
        with self._os("rename to " + final, tmp):
            os.rename(tmp, final)
        self._fsync_dir(os.path.dirname(final))
        return True

    def _rename_noreplace(self, src: str, dst: str) -> bool:
        # link() fails with EEXIST instead of replacing: no window where a racing
        # file could be overwritten.  Filesystems without hard links fall back to
        # check-then-rename.
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARDLINKS:
                raise self._translate(exc, "move to " + dst, src) from exc
            with self._os("move to " + dst, src):
                if os.path.lexists(dst):
                    return False
                os.rename(src, dst)
        else:
            with self._os("remove", src):
                os.unlink(src)
        self._fsync_dir(os.path.dirname(dst))
        self._fsync_dir(os.path.dirname(src))
        return True

    def _remove(self, path: str) -> None:
        with self._os("remove", path), contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _mkdir(self, path: str) -> None:
        with self._os("create directory", path):
            try:
                os.mkdir(path, 0o777)  # the umask decides, like any other tool
            except FileExistsError:
                if not os.path.isdir(path):
                    raise errors.MissingDirectoryError(
                        f"{self.label}: {path} exists and is not a directory"
                    ) from None
                return
        self._fsync_dir(os.path.dirname(path))

    def _fsync_dir(self, directory: str) -> None:
        with self._os("sync directory", directory):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            except OSError as exc:
                # Some filesystems (and SMB mounts) do not support fsync on a directory.
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
                    raise
            finally:
                os.close(fd)

    def close(self) -> None:
        pass
