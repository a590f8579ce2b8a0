"""An FTPS dropzone session: the ``Transport`` primitives over FTP commands.

    stat        MLST (one control-channel round trip; RFC 3659 facts)
    listdir     MLSD
    write_new   STOR, streamed and hashed on the way (then SITE CHMOD, best effort)
    iter_file / read_prefix   RETR
    publish / rename_noreplace   check the target is absent (MLST), then RNFR/RNTO
    remove      DELE          mkdir   MKD

The server must speak RFC 3659 (MLST/MLSD: pyftpdlib, ProFTPD, Pure-FTPd,
FileZilla Server, IIS and Serv-U do; vsftpd does not). FTP has no fsync: a
``226`` after STOR is the server saying it holds the bytes, and the delivery
algorithm then checks their size with MLST.

Links: a server that reports a link as one (``type=OS.unix=symlink`` or
``OS.unix=slink:…``) gets it refused like over SFTP; servers that follow links
in MLST (pyftpdlib does) keep every user inside its own root themselves.

No connection pool: an FTPS login costs a few round trips, and every session
(one delivery, one ack poll) opens its own connection and QUITs at the end.
"""

from __future__ import annotations

import calendar
import contextlib
import ftplib
import logging
import posixpath
import ssl
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dropzone import errors
from dropzone.transports.base import DirEntry, HashingLimiter, ProgressCallback, StatResult, Transport
from dropzone.transports.ftps.connect import FtpsClient, connect
from dropzone.transports.ftps.errors import reply_code, translate

if TYPE_CHECKING:
    from dropzone.connection_config import FtpsConfig

__all__ = ["FtpsTransport"]

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
_OVERLAP_BYTES = 256 * 1024  # chunks this large are hashed while they are sent
_LINK_TYPES = ("os.unix=symlink", "os.unix=slink", "os.unix=link")
_DIR_TYPES = ("dir", "cdir", "pdir")


def _stat_result(facts: dict[str, str]) -> StatResult:
    kind = facts.get("type", "").lower()
    modify = facts.get("modify", "")
    try:
        mtime = float(calendar.timegm(time.strptime(modify[:14], "%Y%m%d%H%M%S"))) if modify else 0.0
    except ValueError:
        mtime = 0.0
    try:
        size = int(facts.get("size") or facts.get("sizd") or 0)
    except ValueError:
        size = 0
    return StatResult(
        size=size,
        mtime=mtime,
        is_dir=kind in _DIR_TYPES,
        is_file=kind == "file",
        is_link=kind.startswith(_LINK_TYPES),
    )


def _parse_mlst(reply: str) -> dict[str, str]:
    """The facts of ``250-…\\n type=file;size=3;… /path\\n250 End``: the line starting with a space."""
    for line in reply.splitlines():
        if line.startswith(" "):
            facts, _, _ = line.strip().partition(" ")
            return {k.lower(): v for k, _, v in (f.partition("=") for f in facts.split(";") if f)}
    raise ftplib.error_proto(f"MLST reply without facts: {reply[:80]!r}")


class FtpsTransport(Transport):
    """One logged-in FTPS (or, when explicitly allowed, plain FTP) session."""

    def __init__(self, config: FtpsConfig, client: FtpsClient, fingerprint: str | None) -> None:
        self.config = config
        self.label = config.label
        self.export_path = config.export_path
        self.ack_path = config.ack_path
        self.atomic_write = config.atomic_write
        self.file_mode = config.file_mode
        self._client: FtpsClient | None = client
        self._fingerprint = fingerprint
        self._broken = False

    @classmethod
    def connect(cls, config: FtpsConfig) -> FtpsTransport:
        client, fingerprint = connect(config)
        return cls(config, client, fingerprint)

    @contextlib.contextmanager
    def _ftp(self, action: str) -> Iterator[FtpsClient]:
        """The client, with every exception translated; a failed connection is never reused."""
        if self._client is None:
            raise errors.DropzoneUnavailableError(f"{self.label}: session is closed; cannot {action}")
        if self._broken:
            # A lost or timed-out connection: another command would only wait out the timeout again.
            raise errors.DropzoneUnavailableError(f"{self.label}: connection lost; cannot {action}")
        try:
            yield self._client
        except ftplib.all_errors as exc:  # ftplib.Error, OSError (ssl and socket), EOFError
            if reply_code(exc) in (None, "421"):
                self._broken = True  # the connection failed, not the request
            raise translate(exc, self.label, action) from exc
        except errors.HostKeyError:
            self._broken = True  # a data connection with another certificate: never trust this session again
            raise
        # Anything else (ours, a cancellation raised by ``progress``, a failing source)
        # passes unchanged; a transfer it interrupts reads the server's answer first.

    # ----- primitives -----

    def join(self, directory: str, name: str) -> str:
        return posixpath.join(directory, name)

    def server_fingerprint(self) -> str | None:
        return self._fingerprint

    def stat(self, path: str) -> StatResult | None:
        try:
            with self._ftp(f"stat {path} (MLST)") as ftp:
                return _stat_result(_parse_mlst(ftp.sendcmd(f"MLST {path}")))
        except errors.MissingDirectoryError:
            return None

    def listdir(self, directory: str) -> list[DirEntry]:
        try:
            with self._ftp(f"list {directory} (MLSD)") as ftp:
                listing = list(ftp.mlsd(directory))
        except errors.MissingDirectoryError as exc:
            raise errors.MissingDirectoryError(f"{self.label}: directory {directory} does not exist") from exc
        return [
            DirEntry(name, _stat_result(facts))
            for name, facts in listing
            if name not in (".", "..") and facts.get("type", "").lower() not in ("cdir", "pdir")
        ]

    def _check_regular(self, path: str) -> bool:
        """MLST before RETR: False when nothing is there; UnsafePathError for a link or a directory."""
        st = self.stat(path)
        if st is not None and not st.is_file:
            kind = "a symbolic link" if st.is_link else "not a regular file"
            raise errors.UnsafePathError(f"{self.label}: {path} is {kind}; not read (links are never followed)")
        return st is not None

    def write_new(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        limit: int,
        exclusive: bool,
        progress: ProgressCallback | None,
    ) -> tuple[int, str]:
        # FTP has no exclusive create: look first (one MLST). Only our own earlier file
        # (a unique .tmp) can be there when not exclusive; never write through a link.
        st = self.stat(path)
        if st is not None:
            if exclusive:
                raise errors.DeliveryConflictError(f"{self.label}: {path} already exists; not overwriting")
            if not st.is_file:
                what = "a symbolic link" if st.is_link else "not a regular file"
                raise errors.UnsafePathError(f"{self.label}: {path} exists and is {what}; not followed, not overwritten")
        hasher = HashingLimiter(limit, self.label, path, progress)
        started = False
        try:
            with self._ftp(f"upload {path} (STOR)") as ftp:
                ftp.binary()
                conn, _ = ftp.ntransfercmd(f"STOR {path}")
                started = True
                self._send(ftp, conn, chunks, hasher)
        except BaseException:
            if started and not self._broken:
                with contextlib.suppress(errors.DropzoneError):
                    self.remove(path)
            raise
        self._set_mode(path)
        return hasher.count, hasher.hexdigest()

    def _send(self, ftp: FtpsClient, conn: Any, chunks: Iterable[bytes], hasher: HashingLimiter) -> None:
        pool: ThreadPoolExecutor | None = None
        try:
            for chunk in chunks:
                if len(chunk) < _OVERLAP_BYTES:
                    conn.sendall(hasher.feed(chunk))
                else:
                    # sha256 and TLS both release the GIL: the chunk is hashed on a helper
                    # thread while it is encrypted and sent (hashing first cost ~10 % of
                    # the throughput of a plain upload). Too many bytes still raise
                    # IntegrityError here, and the file is removed.
                    pool = pool or ThreadPoolExecutor(1, thread_name_prefix="ftps-sha256")
                    hashed = pool.submit(hasher.feed, chunk)
                    try:
                        conn.sendall(chunk)
                    except BaseException:
                        hashed.exception()  # wait for it; the send's failure is the one to report
                        raise
                    hashed.result()
                hasher.done(hasher.count)
            if isinstance(conn, ssl.SSLSocket):
                # close_notify: the server must not take a cut connection for the end of the file.
                conn.unwrap()
        except (OSError, EOFError):
            self._broken = True
            conn.close()
            raise
        except BaseException:
            # Ours stopped it (too many bytes, a cancellation, the source failed):
            # the server still answers the STOR; read that answer so the session stays in step.
            conn.close()
            self._end_transfer(ftp, complete=False)
            raise
        finally:
            if pool is not None:
                pool.shutdown()
        conn.close()
        ftp.voidresp()

    def _end_transfer(self, ftp: FtpsClient, *, complete: bool) -> None:
        if complete:
            ftp.voidresp()
            return
        try:
            ftp.getresp()
        except (ftplib.error_temp, ftplib.error_perm):
            pass  # 426/451: the transfer was cut, as we meant
        except Exception:
            self._broken = True

    def _set_mode(self, path: str) -> None:
        # SITE CHMOD is not standard; where it is refused the server's own mode applies.
        try:
            with self._ftp(f"set the mode of {path} (SITE CHMOD)") as ftp:
                ftp.voidcmd(f"SITE CHMOD {self.file_mode:o} {path}")
        except errors.DropzoneError as exc:
            if self._broken:
                raise
            log.warning("%s: could not set mode %o on %s: %s", self.label, self.file_mode, path, exc.code)

    def _retrieve(self, path: str, chunk_size: int, max_bytes: int | None) -> Iterator[bytes]:
        with self._ftp(f"download {path} (RETR)") as ftp:
            ftp.binary()
            conn, _ = ftp.ntransfercmd(f"RETR {path}")
            complete = False
            try:
                received = 0
                while max_bytes is None or received < max_bytes:
                    want = chunk_size if max_bytes is None else min(chunk_size, max_bytes - received)
                    data = conn.recv(want)
                    if not data:
                        complete = True
                        break
                    received += len(data)
                    yield data
                if complete and isinstance(conn, ssl.SSLSocket):
                    with contextlib.suppress(OSError):  # all bytes are in; the 226 says so
                        conn.unwrap()
            except (OSError, EOFError):
                self._broken = True
                raise
            finally:
                conn.close()
                if not self._broken:
                    self._end_transfer(ftp, complete=complete)

    def iter_file(self, path: str, chunk_size: int) -> Iterator[bytes]:
        self._check_regular(path)
        yield from self._retrieve(path, chunk_size, None)

    def read_prefix(self, path: str, max_bytes: int) -> bytes | None:
        if not self._check_regular(path):
            return None
        try:
            return b"".join(self._retrieve(path, READ_CHUNK, max_bytes))
        except errors.MissingDirectoryError:
            return None  # removed between MLST and RETR

    def publish(self, tmp: str, final: str) -> bool:
        """Move tmp to final unless final exists (then False: the delivery algorithm judges it).

        FTP's RNTO replaces an existing file on most servers (they call rename(2))
        and FTP cannot ask it not to, so the final name is checked first (MLST).
        The race: a file that appears under the final name between that check and
        RNTO is replaced. Only another execution of the same delivery writes that
        name (export file names are unique per export), so what is replaced holds
        the same bytes; what a concurrent execution could lose is a conflict
        report, never an order.
        """
        return self.rename_noreplace(tmp, final)

    def rename_noreplace(self, src: str, dst: str) -> bool:
        """RNFR/RNTO after checking ``dst`` is absent (the race as in ``publish``)."""
        if self.stat(dst) is not None:
            return False
        try:
            with self._ftp(f"rename {src} to {dst} (RNFR/RNTO)") as ftp:
                ftp.rename(src, dst)
        except errors.DropzoneError:
            if self._broken:
                raise
            if self.stat(dst) is not None:  # a server that refuses to replace: the safe direction
                return False
            raise
        return True

    def remove(self, path: str) -> None:
        try:
            with self._ftp(f"remove {path} (DELE)") as ftp:
                ftp.delete(path)
        except errors.MissingDirectoryError:
            pass

    def mkdir(self, path: str) -> None:
        try:
            with self._ftp(f"create directory {path} (MKD)") as ftp:
                ftp.voidcmd(f"MKD {path}")
        except errors.DropzoneError:
            # Most servers answer MKD of an existing directory with 550: fine if it is one.
            st = None if self._broken else self.stat(path)
            if st is None:
                raise
            if st.is_link:
                refusal = f"{path} is a symbolic link, never followed (remove it: the worker creates the folder)"
                raise errors.UnsafePathError(f"{self.label}: {refusal}", path=path) from None
            if not st.is_dir:
                raise errors.MissingDirectoryError(f"{self.label}: {path} exists and is not a directory") from None

    # ----- session -----

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if not self._broken:
            with contextlib.suppress(Exception):
                client.quit()
        client.close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Anything but a project error (a bug, a cancellation mid-transfer) may have left the
        # control channel out of step: close without waiting for QUIT's answer.
        if exc_type is not None and not issubclass(exc_type, errors.DropzoneError):
            self._broken = True
        self.close()
