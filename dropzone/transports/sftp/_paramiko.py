"""Every use of paramiko's private internals, and nothing else.

paramiko's public SFTP client cannot pipeline writes with their statuses kept
(``SFTPFile.set_pipelined`` registers writes with no owner, so a failed write
such as a full disk can be dropped silently and ``close()`` swallows errors),
does not expose the server's extension list (``limits@openssh.com``,
``posix-rename@openssh.com``, ``fsync@openssh.com``) or the raw status code of a
reply, and its Transport does not say what the server offered when key exchange
finds nothing in common. This module fills those gaps through the internals
named in ``INTERNALS`` and no others; no other module of the tree may touch them.

Checked with paramiko 5.1.0 (pyproject.toml pins ``paramiko>=5.1,<6``).
``tests/dropzone/transports/test_paramiko_internals.py`` fails, naming the
attribute and the installed version, if any of them disappears or changes
signature, and makes one real round trip through each against OpenSSH and
asyncssh. Widen the pin only after that test passes on the new version.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_INIT,
    CMD_OPEN,
    CMD_READ,
    CMD_RENAME,
    CMD_STATUS,
    CMD_VERSION,
    CMD_WRITE,
    SFTPError,
    int64,
)
from paramiko.ssh_exception import IncompatiblePeer

from dropzone import errors
from dropzone.transports.sftp.errors import FX_BAD_MESSAGE, FX_EOF, FX_OK, NoCommonAlgorithm, SftpStatusError

__all__ = ["INTERNALS", "CallerAborted", "SFTPClient", "Transport", "implemented_algorithms", "sent_kex_init", "set_pubkey_algorithms"]

SAFE_REQUEST_SIZE = 32 * 1024  # every SFTP server must accept this much per request
MAX_REQUEST_SIZE = 256 * 1024
MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024

# (class, attribute) -> the parameters relied on (None: a class attribute, not a method).
INTERNALS: dict[tuple[type, str], tuple[str, ...] | None] = {
    (paramiko.SFTPClient, "_request"): ("self", "t", "*args"),
    (paramiko.SFTPClient, "_async_request"): ("self", "fileobj", "t", "*args"),
    (paramiko.SFTPClient, "_read_response"): ("self", "waitfor=None"),
    (paramiko.SFTPClient, "_convert_status"): ("self", "msg"),
    (paramiko.SFTPClient, "_send_version"): ("self",),
    (paramiko.SFTPClient, "_send_packet"): ("self", "t", "packet"),
    (paramiko.SFTPClient, "_read_packet"): ("self",),
    (paramiko.Transport, "_parse_kex_init"): ("self", "m"),
    (paramiko.Transport, "_really_parse_kex_init"): ("self", "m", "ignore_first_byte=False"),
    (paramiko.Transport, "_get_latest_kex_init"): ("self",),
    (paramiko.Transport, "_kex_info"): None,
    (paramiko.Transport, "_key_info"): None,
    (paramiko.Transport, "_cipher_info"): None,
    (paramiko.Transport, "_mac_info"): None,
    (paramiko.Transport, "_preferred_pubkeys"): None,
}
# What ``_really_parse_kex_init`` returns and ``mismatch`` reads; and the callback
# ``_read_response`` calls on the owner of an asynchronous request.
KEX_INIT_KEYS = (
    "kex_algo_list",
    "server_key_algo_list",
    "server_encrypt_algo_list",
    "client_encrypt_algo_list",
    "server_mac_algo_list",
    "client_mac_algo_list",
)
ASYNC_RESPONSE = "_async_response"


# ----- algorithms -----


def implemented_algorithms() -> dict[str, tuple[str, ...]]:
    """What the installed paramiko implements, by kind (``dropzone.ssh_algorithms``' categories)."""
    t = paramiko.Transport
    return {
        "kex": tuple(t._kex_info),
        "keys": tuple(t._key_info),
        "ciphers": tuple(t._cipher_info),
        "macs": tuple(t._mac_info),
    }


def set_pubkey_algorithms(transport: paramiko.Transport, names: tuple[str, ...]) -> None:
    """Signature algorithms offered for our own key (public key authentication)."""
    transport._preferred_pubkeys = names


def sent_kex_init(transport: paramiko.Transport) -> dict[str, Any]:
    """The KEXINIT we sent the server, parsed (what we offered on the wire)."""
    return transport._get_latest_kex_init()


class Transport(paramiko.Transport):
    """paramiko's Transport, which also says what the server offered when nothing matched."""

    def _parse_kex_init(self, m: Message) -> None:
        offer = self._really_parse_kex_init(Message(m.asbytes()))
        try:
            super()._parse_kex_init(m)
        except IncompatiblePeer:
            raise mismatch(self, offer) from None


def mismatch(t: paramiko.Transport, offer: dict[str, Any]) -> IncompatiblePeer:
    """The first kind of algorithm with nothing in common, like paramiko checks them."""
    pseudo = ("ext-info-", "kex-strict-")  # markers in the kex list, not algorithms
    kex = [k for k in offer["kex_algo_list"] if not k.startswith(pseudo)]
    kinds = (
        ("key exchange algorithm", kex, t.preferred_kex),
        ("host key algorithm", offer["server_key_algo_list"], t.preferred_keys),
        ("cipher", offer["server_encrypt_algo_list"] + offer["client_encrypt_algo_list"], t.preferred_ciphers),
        ("MAC", offer["server_mac_algo_list"] + offer["client_mac_algo_list"], t.preferred_macs),
    )
    for what, offered, ours in kinds:
        if not set(offered) & set(ours):
            return NoCommonAlgorithm(what, list(dict.fromkeys(offered)), tuple(a for a in ours if "-cert-" not in a))
    return IncompatiblePeer("no common algorithm")


# ----- the SFTP client -----


class CallerAborted(Exception):
    """The caller's code (the source of the chunks, the hasher, the progress callback)
    raised between two requests: the SFTP stream is in step, so the session stays
    usable and ``original`` is what the caller must see (a cancellation, a bug)."""

    def __init__(self, original: Exception) -> None:
        super().__init__(type(original).__name__)
        self.original = original


class _Hasher(Protocol):
    count: int

    def feed(self, chunk: bytes) -> bytes: ...

    def done(self, written: int) -> None: ...


class _StatusSink:
    """Owner of pipelined requests: counts replies and keeps the first failure."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.error: SftpStatusError | SFTPError | None = None

    def _async_response(self, t: int, msg: Message, num: int) -> None:
        self.outstanding -= 1
        if t == CMD_STATUS:
            code = msg.get_int()
            if code != FX_OK and self.error is None:
                self.error = SftpStatusError(code, msg.get_text())
        elif self.error is None:
            self.error = SFTPError(f"unexpected SFTP reply type {t}")


class _ReadSink:
    """Owner of pipelined reads: keeps each reply by request number."""

    def __init__(self) -> None:
        self.replies: dict[int, tuple[int, bytes | SftpStatusError | EOFError]] = {}

    def _async_response(self, t: int, msg: Message, num: int) -> None:
        if t == CMD_DATA:
            self.replies[num] = (t, msg.get_string())
        elif t == CMD_STATUS:
            code = msg.get_int()
            text = msg.get_text()
            self.replies[num] = (t, EOFError(text) if code == FX_EOF else SftpStatusError(code, text))
        else:
            self.replies[num] = (t, SftpStatusError(FX_BAD_MESSAGE, f"unexpected SFTP reply type {t}"))


class SFTPClient(paramiko.SFTPClient):
    """paramiko's client, keeping the server's extension list and raw status codes,
    with the requests the transport needs (handles, extensions, pipelined I/O)."""

    server_extensions: dict[str, bytes]

    def _send_version(self) -> int:
        msg = Message()
        msg.add_int(3)
        self._send_packet(CMD_INIT, msg)
        t, data = self._read_packet()
        if t != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        version = struct.unpack(">I", data[:4])[0]
        exts: dict[str, bytes] = {}
        m = Message(data[4:])
        with contextlib.suppress(Exception):
            while m.get_remainder():
                name = m.get_string().decode("utf-8", "replace")
                exts[name] = m.get_string()
        self.server_extensions = exts
        return version

    def _convert_status(self, msg: Message) -> None:
        code = msg.get_int()
        text = msg.get_text()
        if code == FX_OK:
            return
        if code == FX_EOF:
            raise EOFError(text)
        raise SftpStatusError(code, text)

    def limits(self) -> tuple[int, int]:
        """(write size, read size) per request, from limits@openssh.com when offered."""
        if "limits@openssh.com" not in self.server_extensions:
            return SAFE_REQUEST_SIZE, SAFE_REQUEST_SIZE
        try:
            t, msg = self._request(CMD_EXTENDED, "limits@openssh.com")
            if t != CMD_EXTENDED_REPLY:
                return SAFE_REQUEST_SIZE, SAFE_REQUEST_SIZE
            msg.get_int64()  # max packet length
            max_read = msg.get_int64()
            max_write = msg.get_int64()
        except (SftpStatusError, SFTPError, struct.error):
            return SAFE_REQUEST_SIZE, SAFE_REQUEST_SIZE

        def pick(n: int) -> int:
            return SAFE_REQUEST_SIZE if n <= 0 else max(4096, min(n, MAX_REQUEST_SIZE))

        return pick(max_write), pick(max_read)

    def open_handle(self, path: str, flags: int, mode: int | None) -> bytes:
        attrs = paramiko.SFTPAttributes()
        if mode is not None:
            attrs.st_mode = mode
        t, msg = self._request(CMD_OPEN, path, flags, attrs)
        if t != CMD_HANDLE:
            raise SFTPError("Expected handle")
        return msg.get_binary()

    def close_handle(self, handle: bytes) -> None:
        self._request(CMD_CLOSE, handle)

    def extended(self, name: str, *args: Any) -> None:
        """A server extension request (``fsync@openssh.com``, ``posix-rename@openssh.com``)."""
        self._request(CMD_EXTENDED, name, *args)

    def rename_request(self, src: str, dst: str) -> None:
        """The plain SFTP rename (refuses an existing target on OpenSSH and asyncssh)."""
        self._request(CMD_RENAME, src, dst)

    def read_at(self, handle: bytes, offset: int, length: int) -> bytes:
        """One READ; b"" at end of file."""
        try:
            t, msg = self._request(CMD_READ, handle, int64(offset), length)
        except EOFError:
            return b""
        if t != CMD_DATA:
            raise SFTPError("Expected data")
        return msg.get_string()

    def write_pipelined(
        self, handle: bytes, chunks: Iterable[bytes], hasher: _Hasher, *, request_size: int, file_mode: int
    ) -> SftpStatusError | SFTPError | None:
        """Write every chunk (through ``hasher``) with up to MAX_IN_FLIGHT_BYTES unanswered.

        Raises the first failed write's status. Returns the failure of setting
        ``file_mode`` (best effort: some servers, Windows ones, cannot chmod), if any.
        """
        req = request_size
        max_outstanding = max(4, MAX_IN_FLIGHT_BYTES // req)
        sink = _StatusSink()
        mode_sink = _StatusSink()
        # The open's mode is filtered by the server's umask: set it explicitly, pipelined.
        attrs = paramiko.SFTPAttributes()
        attrs.st_mode = file_mode
        self._async_request(mode_sink, CMD_FSETSTAT, handle, attrs)
        mode_sink.outstanding += 1
        offset = 0
        pending = bytearray()

        def send(piece: bytes | memoryview) -> None:
            nonlocal offset
            while sink.outstanding >= max_outstanding:
                self._read_response()
                if sink.error is not None:
                    raise sink.error
            self._async_request(sink, CMD_WRITE, handle, int64(offset), bytes(piece))
            sink.outstanding += 1
            offset += len(piece)

        source = iter(chunks)
        while True:
            try:
                chunk = next(source, None)
                if chunk is None:
                    break
                data = hasher.feed(chunk)
            except errors.DropzoneError:
                raise
            except Exception as exc:
                raise CallerAborted(exc) from exc
            if pending:
                pending += data
                data_view = memoryview(bytes(pending))
                pending.clear()
            else:
                data_view = memoryview(data)
            while len(data_view) >= req:
                send(data_view[:req])
                data_view = data_view[req:]
            if len(data_view):
                pending += data_view
            try:
                hasher.done(hasher.count)
            except errors.DropzoneError:
                raise
            except Exception as exc:
                raise CallerAborted(exc) from exc
        if pending:
            send(pending)
        while sink.outstanding > 0 or mode_sink.outstanding > 0:
            self._read_response()
            if sink.error is not None:
                raise sink.error
        if sink.error is not None:
            raise sink.error
        return mode_sink.error

    def read_pipelined(self, handle: bytes, request_size: int) -> Iterator[bytes]:
        """The file's bytes in order, with up to MAX_IN_FLIGHT_BYTES requested ahead."""
        req = request_size
        max_outstanding = max(4, MAX_IN_FLIGHT_BYTES // req)
        sink = _ReadSink()
        queue: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
        next_offset = 0
        eof = False
        while True:
            while not eof and len(queue) < max_outstanding:
                num = self._async_request(sink, CMD_READ, handle, int64(next_offset), req)
                queue.append((num, next_offset, req))
                next_offset += req
            if not queue:
                return
            num, offset, length = queue.popleft()
            while num not in sink.replies:
                self._read_response()
            _, reply = sink.replies.pop(num)
            if isinstance(reply, EOFError):
                eof = True
                continue
            if isinstance(reply, Exception):
                raise reply
            yield reply
            if len(reply) < length and not eof:
                # A short read before EOF: fetch the gap synchronously so the
                # stream stays contiguous, then continue with the queued requests.
                pos = offset + len(reply)
                end = offset + length
                while pos < end:
                    data = self.read_at(handle, pos, end - pos)
                    if not data:
                        eof = True
                        break
                    yield data
                    pos += len(data)
