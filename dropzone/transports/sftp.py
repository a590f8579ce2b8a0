"""SFTP dropzone on paramiko: verified host keys, pipelined writes, pooled connections.

Why it looks the way it does (measured against OpenSSH and asyncssh servers):

* The socket is ours (TCP_NODELAY, connect timeout); paramiko's ``timeout``
  would only cover the TCP connect, so banner, handshake, auth and channel
  timeouts are set too, and the SFTP channel gets ``operation_timeout``.
* The host key is checked against the pinned one right after key exchange and
  BEFORE any authentication request: a server we do not trust never sees a
  password or a signature.  No pin means refusal (HOST_KEY_UNKNOWN) — trusting
  a key is an explicit operator act (``fetch_host_key`` + pin it).
* Writes are pipelined with our own response tracking.  paramiko's
  ``SFTPFile.set_pipelined`` registers write requests with no owner, so a
  failed write (disk full) can be dropped silently and ``close()`` swallows
  errors; here every status is collected and the first failure raised.
  Request size follows the server's ``limits@openssh.com`` answer (up to
  256 KiB), 32 KiB — the size every server must accept — otherwise.
* ``posix-rename@openssh.com`` publishes atomically (plain SFTP rename
  refuses existing targets on OpenSSH and asyncssh); ``fsync@openssh.com``
  makes the bytes durable before the rename when offered.
* A stalled server (SIGSTOP, a hung host) must not hold a worker thread for
  good: the channel's ``operation_timeout`` bounds waits for replies and for
  the SSH window, ``_SendBoundSocket`` bounds a TCP send the peer never
  drains, and a connection that failed once fails every later request at
  once instead of waiting out the timeout again.
* Only current SSH algorithms are offered (``dropzone.ssh_algorithms``); a
  connection may re-enable a named legacy one (``legacy_algorithms``). A server
  that shares none fails with ``SSH_ALGORITHM_MISMATCH`` saying what it offered
  (``_Transport`` keeps its KEXINIT), not with a retried "SSH error".
* Every library exception goes through ``_translate`` — the only place.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import io
import logging
import os
import posixpath
import secrets
import socket
import stat as stat_mod
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paramiko
from paramiko.message import Message
from paramiko.ssh_exception import IncompatiblePeer
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
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTPError,
    int64,
)

from dropzone import errors, ssh_algorithms
from dropzone.connection_config import SftpConfig
from dropzone.transports.base import (
    DirEntry,
    FileDropzoneBase,
    HashingLimiter,
    ProgressCallback,
    StatResult,
)

__all__ = [
    "SftpConnectionPool",
    "SftpDropzone",
    "fetch_host_key",
    "host_key_fingerprint",
    "load_private_key",
    "public_key_line",
]

log = logging.getLogger(__name__)

# SFTP v3 status codes, plus the v5/v6 ones some servers send regardless.
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE = 0, 1, 2, 3, 4
FX_BAD_MESSAGE, FX_NO_CONNECTION, FX_CONNECTION_LOST, FX_OP_UNSUPPORTED = 5, 6, 7, 8
FX_NO_SUCH_PATH, FX_FILE_ALREADY_EXISTS, FX_WRITE_PROTECT = 10, 11, 12
FX_NO_SPACE_ON_FILESYSTEM, FX_QUOTA_EXCEEDED, FX_NOT_A_DIRECTORY = 14, 15, 19

_MISSING_CODES = {FX_NO_SUCH_FILE, FX_NO_SUCH_PATH, FX_NOT_A_DIRECTORY}
_PERMISSION_CODES = {FX_PERMISSION_DENIED, FX_WRITE_PROTECT}
_FULL_CODES = {FX_NO_SPACE_ON_FILESYSTEM, FX_QUOTA_EXCEEDED}

SAFE_REQUEST_SIZE = 32 * 1024  # every SFTP server must accept this much per request
MAX_REQUEST_SIZE = 256 * 1024
MAX_IN_FLIGHT_BYTES = 8 * 1024 * 1024
CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_MAX_PACKET = 32 * 1024
KEEPALIVE_SECONDS = 30

# Host key algorithm families, for fingerprint pins whose key type we do not know.
_KEY_FAMILIES: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),  # an RSA key, with SHA-2 signatures only
}
_family_cache: dict[tuple[str, int, str], tuple[str, ...]] = {}


# ---------------------------------------------------------------------------
# host keys and private keys
# ---------------------------------------------------------------------------


def host_key_fingerprint(pkey: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:<unpadded base64>`` of the public key blob."""
    digest = hashlib.sha256(pkey.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def public_key_line(pkey: paramiko.PKey) -> str:
    """``<type> <base64>`` as in known_hosts / authorized_keys."""
    return f"{_key_family(pkey.get_name())} {pkey.get_base64()}"


def _key_family(name: str) -> str:
    return "ssh-rsa" if name in ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa") else name


def _pin_matches(pin: str, key: paramiko.PKey) -> bool:
    if pin.startswith("SHA256:"):
        return hmac.compare_digest(pin.rstrip("="), host_key_fingerprint(key))
    parts = pin.split()
    try:
        blob = base64.b64decode(parts[1])
    except (ValueError, IndexError):
        return False
    return hmac.compare_digest(blob, key.asbytes())


def _key_type_candidates(host: str, port: int, pin: str | None) -> list[tuple[str, ...] | None]:
    """Which host key algorithms to offer, in order; None = paramiko's default list."""
    if pin is None:
        return [None]
    if not pin.startswith("SHA256:"):
        # Offer the pinned key's family; if the server no longer has one, look at
        # what it does present so the mismatch can be reported.
        family = _KEY_FAMILIES.get(pin.split()[0])
        return [family, None] if family else [None]
    # A bare fingerprint does not say which of the server's keys it belongs to:
    # try the default first, then every family (only on a mismatch), and remember.
    cached = _family_cache.get((host, port, pin))
    first: list[tuple[str, ...] | None] = [cached] if cached else [None]
    return first + [f for f in _KEY_FAMILIES.values() if f != cached]


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """ed25519, RSA or ECDSA key from OpenSSH or PEM text; InvalidConfigError otherwise.

    Errors are raised outside the ``except`` blocks: the library exceptions are
    not kept even as ``__context__`` (they could quote key bytes).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    data = text.encode("utf-8")
    pw = passphrase.encode("utf-8") if passphrase else None
    problem: str | None = None
    loaded: Any = None
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=pw)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=pw)
    except TypeError:
        # cryptography: "password was not given but key is encrypted" or the reverse
        problem = (
            "ssh_key is not encrypted but ssh_key_passphrase is set"
            if passphrase
            else "ssh_key is encrypted: ssh_key_passphrase is required"
        )
    except Exception:
        problem = "ssh_key could not be loaded (wrong ssh_key_passphrase or unsupported key format)"
    if problem is not None:
        raise errors.InvalidConfigError(problem)
    if isinstance(loaded, rsa.RSAPrivateKey):
        cls: type[paramiko.PKey] = paramiko.RSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        cls = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        cls = paramiko.ECDSAKey
    else:
        raise errors.InvalidConfigError("ssh_key has an unsupported key type (use ed25519, RSA or ECDSA)")
    key: paramiko.PKey | None = None
    with contextlib.suppress(Exception):
        key = cls.from_private_key(io.StringIO(text), password=passphrase)
    if key is None:
        raise errors.InvalidConfigError("ssh_key could not be loaded by the SSH library")
    return key


# ---------------------------------------------------------------------------
# SFTP client with status codes and server extensions
# ---------------------------------------------------------------------------


class SftpStatusError(IOError):
    """An SFTP status reply; ``errno`` kept compatible with paramiko's mapping."""

    def __init__(self, code: int, text: str) -> None:
        eno = {FX_NO_SUCH_FILE: errno.ENOENT, FX_PERMISSION_DENIED: errno.EACCES}.get(code)
        if eno is not None:
            super().__init__(eno, text)
        else:
            super().__init__(text)
        self.sftp_code = code
        self.text = text


class _SFTPClient(paramiko.SFTPClient):
    """paramiko's client, keeping the server's extension list and raw status codes."""

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


# ---------------------------------------------------------------------------
# connection
# ---------------------------------------------------------------------------


@dataclass
class _Session:
    """One authenticated SSH transport with its SFTP channel (thread-confined while lent)."""

    transport: paramiko.Transport
    sftp: _SFTPClient
    url: str
    fingerprint: str
    operation_timeout: float
    write_size: int
    read_size: int
    posix_rename: bool
    fsync: bool
    broken: bool = False
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)

    def alive(self, timeout: float, *, trust_if_used_within: float = 0.0) -> bool:
        if self.broken or not self.transport.is_active():
            return False
        chan = self.sftp.get_channel()
        if chan is None or chan.closed:
            return False
        if time.monotonic() - self.last_used < trust_if_used_within:
            # Just given back healthy and paramiko has seen no EOF since: a probe
            # round trip per delivery cost ~5 % of a burst's throughput (benchmarks/).
            # Should the server have dropped it silently anyway, the first request
            # fails as a transient error and the retry gets a fresh connection.
            return True
        try:
            chan.settimeout(min(timeout, self.operation_timeout))
            self.sftp.normalize(".")
            return True
        except Exception:
            self.broken = True
            return False
        finally:
            with contextlib.suppress(Exception):
                chan.settimeout(self.operation_timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.transport.close()


def _stat_result(attrs: paramiko.SFTPAttributes) -> StatResult:
    mode = attrs.st_mode or 0
    return StatResult(
        size=attrs.st_size or 0,
        mtime=float(attrs.st_mtime or 0),
        is_dir=stat_mod.S_ISDIR(mode),
        is_file=stat_mod.S_ISREG(mode),
        is_link=stat_mod.S_ISLNK(mode),
    )


def _url(host: str, port: int, username: str | None) -> str:
    return f"sftp://{username}@{host}:{port}" if username else f"sftp://{host}:{port}"


def _translate(exc: BaseException, url: str, action: str) -> errors.DropzoneError:
    """THE translation of paramiko / socket / OS errors for SFTP (see module docstring)."""
    if isinstance(exc, errors.DropzoneError):
        return exc
    if isinstance(exc, paramiko.AuthenticationException):
        return errors.AuthenticationError(f"{url}: authentication failed")
    if isinstance(exc, SftpStatusError):
        code, text = exc.sftp_code, (exc.text or "").strip()
        where = f"{url}: cannot {action}: {text or 'status ' + str(code)}"
        if code in _MISSING_CODES:
            return errors.MissingDirectoryError(where)
        if code in _PERMISSION_CODES:
            return errors.PermissionDeniedError(where)
        if code == FX_FILE_ALREADY_EXISTS:
            return errors.DeliveryConflictError(where)
        if code in _FULL_CODES:
            return errors.DropzoneUnavailableError(where)
        # FAILURE is how OpenSSH reports ENOSPC, EDQUOT and other errors without an
        # SFTP v3 code: retried, with the server's text for the operator.
        return errors.DropzoneUnavailableError(where)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return errors.DropzoneUnavailableError(f"{url}: timed out during {action}")
    if isinstance(exc, ConnectionRefusedError):
        return errors.DropzoneUnavailableError(f"{url}: connection refused")
    if isinstance(exc, socket.gaierror):
        return errors.DropzoneUnavailableError(f"{url}: cannot resolve host name")
    if isinstance(exc, (EOFError, ConnectionError)):
        return errors.DropzoneUnavailableError(f"{url}: connection lost during {action}")
    if isinstance(exc, _NoCommonAlgorithm):
        return _mismatch_error(exc, url)
    if isinstance(exc, paramiko.SSHException):
        # Negotiation failures, "Server connection dropped", channel closed …
        return errors.DropzoneUnavailableError(f"{url}: SSH error during {action}: {_safe_text(exc)}")
    if isinstance(exc, OSError):
        code = exc.errno
        if code == errno.ENOENT or code == errno.ENOTDIR:
            return errors.MissingDirectoryError(f"{url}: cannot {action}: no such file or directory")
        if code in (errno.EACCES, errno.EPERM):
            return errors.PermissionDeniedError(f"{url}: cannot {action}: permission denied")
        reason = os.strerror(code) if code else (_safe_text(exc) or type(exc).__name__)
        return errors.DropzoneUnavailableError(f"{url}: {action} failed: {reason}")
    return errors.DropzoneUnavailableError(f"{url}: {action} failed: {type(exc).__name__}")


def _safe_text(exc: BaseException) -> str:
    # paramiko exception texts carry protocol words, never our credentials; cap them anyway.
    return str(exc).replace("\n", " ")[:200]


class _SendBoundSocket:
    """The TCP socket as paramiko uses it, with a bound on how long a send may stall.

    paramiko polls its socket with a 0.1 s timeout and retries a timed-out send
    for as long as the transport is open. A server that stops reading (SIGSTOP,
    a hung host) once our send buffer is full would hold the sending thread —
    and paramiko's write lock, so every other sender on the connection too —
    for good: ``operation_timeout`` only bounds waits for the SSH window and for
    replies. Here a send that has moved no byte for ``stall_seconds`` fails like
    a dead connection (paramiko turns it into EOFError, a transient error).
    """

    def __init__(self, sock: socket.socket, stall_seconds: float) -> None:
        self._sock = sock
        self._stall_seconds = stall_seconds
        self._stalled_since: float | None = None

    def send(self, data: bytes) -> int:
        try:
            sent = self._sock.send(data)
        except TimeoutError:
            now = time.monotonic()
            if self._stalled_since is None:
                self._stalled_since = now
            elif now - self._stalled_since >= self._stall_seconds:
                # Not ETIMEDOUT: Python makes that a TimeoutError, which paramiko retries.
                raise ConnectionAbortedError(
                    errno.ECONNABORTED, "send stalled: the server stopped reading"
                ) from None
            raise
        self._stalled_since = None
        return sent

    def __getattr__(self, name: str) -> Any:
        # recv, settimeout, close, getpeername, _closed …: the socket's own.
        return getattr(self._sock, name)


class _NoCommonAlgorithm(IncompatiblePeer):
    """Key exchange found no algorithm of one kind that both sides allow."""

    def __init__(self, what: str, offered: list[str], allowed: tuple[str, ...]) -> None:
        super().__init__(f"no common {what}")
        self.what = what
        self.offered = [_safe_name(n) for n in offered[:20] if n]
        self.allowed = allowed


def _safe_name(name: str) -> str:
    # The server's words: printable ASCII only, bounded.
    return "".join(c for c in name if c.isascii() and c.isprintable())[:64] or "?"


class _Transport(paramiko.Transport):
    """paramiko's Transport, which also says what the server offered when nothing matched."""

    def _parse_kex_init(self, m: Message) -> None:
        offer = self._really_parse_kex_init(Message(m.asbytes()))
        try:
            super()._parse_kex_init(m)
        except IncompatiblePeer:
            raise _mismatch(self, offer) from None


def _mismatch(t: paramiko.Transport, offer: dict[str, Any]) -> IncompatiblePeer:
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
            return _NoCommonAlgorithm(what, list(dict.fromkeys(offered)), tuple(a for a in ours if "-cert-" not in a))
    return IncompatiblePeer("no common algorithm")


def _mismatch_error(exc: _NoCommonAlgorithm, url: str) -> errors.SshAlgorithmError:
    legacy = [n for n in exc.offered if n in ssh_algorithms.LEGACY]
    removed = [n for n in exc.offered if n in ssh_algorithms.UNAVAILABLE]
    if legacy:
        hint = (
            f"; if the server cannot be upgraded, allow one of them explicitly with the connection's "
            f'legacy_algorithms (e.g. ["{legacy[0]}"])'
        )
    elif removed:
        hint = f"; {removed[0]} cannot be enabled: {ssh_algorithms.UNAVAILABLE[removed[0]]}"
    else:
        hint = ""
    return errors.SshAlgorithmError(
        f"{url}: the server offers no {exc.what} this connection allows: it offers "
        f"{', '.join(exc.offered) or 'none'}; allowed: {', '.join(exc.allowed) or 'none'}{hint}"
    )


def _offer(transport: paramiko.Transport, key_types: tuple[str, ...] | None, legacy: tuple[str, ...]) -> None:
    """Offer only current algorithms plus the legacy ones named (``dropzone.ssh_algorithms``)."""
    allowed = ssh_algorithms.allowed(legacy)
    opts = transport.get_security_options()
    opts.kex = tuple(k for k in allowed["kex"] if k in transport._kex_info)
    opts.ciphers = tuple(c for c in allowed["ciphers"] if c in transport._cipher_info)
    opts.digests = tuple(m for m in allowed["macs"] if m in transport._mac_info)
    keys = tuple(k for k in allowed["keys"] if k in transport._key_info)
    opts.key_types = tuple(k for k in key_types if k in keys) if key_types else keys
    # Signature algorithms for our own key (public key authentication): the same.
    transport._preferred_pubkeys = keys


def _open_socket(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _negotiate(
    host: str,
    port: int,
    timeout: float,
    key_types: tuple[str, ...] | None,
    *,
    send_stall_seconds: float | None = None,
    legacy: tuple[str, ...] = (),
) -> paramiko.Transport:
    """TCP connect + SSH key exchange, no authentication."""
    sock = _open_socket(host, port, timeout)
    try:
        transport = _Transport(
            _SendBoundSocket(sock, send_stall_seconds or timeout),  # type: ignore[arg-type]
            default_window_size=CHANNEL_WINDOW,
            default_max_packet_size=CHANNEL_MAX_PACKET,
        )
    except BaseException:
        sock.close()
        raise
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        _offer(transport, key_types, legacy)
        transport.start_client(timeout=timeout)
        if not transport.is_active() or transport.host_key is None:
            raise TimeoutError("SSH negotiation did not finish")
        return transport
    except BaseException:
        transport.close()
        raise


def _negotiate_verified(config: SftpConfig, url: str) -> tuple[paramiko.Transport, str]:
    """Connect and check the host key against the pin, before any authentication."""
    pin = config.host_key
    seen: list[str] = []
    unmatched: IncompatiblePeer | None = None  # kept from the widest offer, for the message
    candidates = _key_type_candidates(config.host, config.port, pin)
    for i, key_types in enumerate(candidates):
        last = i == len(candidates) - 1
        try:
            transport = _negotiate(
                config.host,
                config.port,
                config.connect_timeout_seconds,
                key_types,
                send_stall_seconds=config.operation_timeout_seconds,
                legacy=config.legacy_algorithms,
            )
        except IncompatiblePeer as exc:
            if isinstance(exc, _NoCommonAlgorithm) and exc.what != "host key algorithm":
                raise  # no other host key family can help
            if unmatched is None or key_types is None:
                unmatched = exc
            # The server has no host key of this family (e.g. the pinned one is gone).
            if not last:
                continue
            if seen:
                break
            raise unmatched from None
        key = transport.get_remote_server_key()
        fingerprint = host_key_fingerprint(key)
        if pin is None:
            transport.close()
            raise errors.HostKeyError(
                f"{url}: host key {fingerprint} ({_key_family(key.get_name())}) is not trusted; "
                "verify it with the server's operator and pin it (dropzone connections test ID --trust SHA256:…)",
                code="HOST_KEY_UNKNOWN",
            )
        if _pin_matches(pin, key):
            if pin.startswith("SHA256:") and key_types is not None:
                _family_cache[(config.host, config.port, pin)] = key_types
            return transport, fingerprint
        transport.close()
        presented = f"{fingerprint} ({_key_family(key.get_name())})"
        if presented not in seen:
            seen.append(presented)
        if not pin.startswith("SHA256:"):
            break  # a key line names its family: the server's key of that family differs
    raise errors.HostKeyError(
        f"{url}: host key mismatch: server presented {', '.join(seen) or 'no usable key'}, which does "
        "not match the pinned host_key; the server may have been replaced or re-keyed",
        code="HOST_KEY_MISMATCH",
    )


def _authenticate(transport: paramiko.Transport, config: SftpConfig) -> None:
    transport.auth_timeout = config.operation_timeout_seconds
    pkey = None
    if config.ssh_key is not None:
        passphrase = config.ssh_key_passphrase.get_secret_value() if config.ssh_key_passphrase else None
        pkey = load_private_key(config.ssh_key.get_secret_value(), passphrase)
    started = time.monotonic()
    try:
        _offer_credentials(transport, config, pkey)
    except paramiko.AuthenticationException as exc:
        if transport.is_active() and time.monotonic() - started < transport.auth_timeout:
            raise  # the server answered: it refuses these credentials (AUTH_FAILED)
        # paramiko says "authentication failed" as well when the connection drops
        # mid-authentication (a server restarting) or the server never answers (a
        # hung one): neither is the operator's to fix, so both are retried.
        # (A server that rejects and hangs up at once would be retried too; OpenSSH
        # keeps the connection open until MaxAuthTries.)
        raise EOFError("connection lost or no answer during authentication") from exc
    if not transport.is_authenticated():
        raise paramiko.AuthenticationException("not authenticated")


def _offer_credentials(transport: paramiko.Transport, config: SftpConfig, pkey: paramiko.PKey | None) -> None:
    if pkey is not None:
        try:
            transport.auth_publickey(config.username, pkey)
        except paramiko.AuthenticationException:
            if config.password is None:
                raise
    if not transport.is_authenticated() and config.password is not None:
        # fallback=True: servers that only offer keyboard-interactive get the password there.
        transport.auth_password(config.username, config.password.get_secret_value(), fallback=True)


def _limits(sftp: _SFTPClient) -> tuple[int, int]:
    """(write size, read size) per request, from limits@openssh.com when offered."""
    if "limits@openssh.com" not in sftp.server_extensions:
        return SAFE_REQUEST_SIZE, SAFE_REQUEST_SIZE
    try:
        t, msg = sftp._request(CMD_EXTENDED, "limits@openssh.com")
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


def _connect(config: SftpConfig) -> _Session:
    url = _url(config.host, config.port, config.username)
    transport: paramiko.Transport | None = None
    try:
        transport, fingerprint = _negotiate_verified(config, url)
        _authenticate(transport, config)
        transport.set_keepalive(KEEPALIVE_SECONDS)
        chan = transport.open_session(
            window_size=CHANNEL_WINDOW,
            max_packet_size=CHANNEL_MAX_PACKET,
            timeout=config.operation_timeout_seconds,
        )
        chan.settimeout(config.operation_timeout_seconds)
        chan.invoke_subsystem("sftp")
        sftp = _SFTPClient(chan)
        write_size, read_size = _limits(sftp)
        exts = sftp.server_extensions
        return _Session(
            transport=transport,
            sftp=sftp,
            url=url,
            fingerprint=fingerprint,
            operation_timeout=config.operation_timeout_seconds,
            write_size=write_size,
            read_size=read_size,
            posix_rename="posix-rename@openssh.com" in exts,
            fsync="fsync@openssh.com" in exts,
        )
    except BaseException as exc:
        action = "authentication" if transport is not None and not transport.is_authenticated() else "connect"
        if transport is not None:
            transport.close()
        if isinstance(exc, errors.DropzoneError) or not isinstance(exc, Exception):
            raise
        raise _translate(exc, url, action) from exc


def fetch_host_key(
    host: str, port: int = 22, timeout: float = 10.0, *, legacy_algorithms: tuple[str, ...] = ()
) -> tuple[str, str, str]:
    """(key type, ``SHA256:`` fingerprint, public key line) of the server, without authenticating.

    For ``connections test --trust``: show the operator what they are about to pin.
    """
    url = _url(host, port, None)
    try:
        transport = _negotiate(host, port, timeout, None, legacy=legacy_algorithms)
    except errors.DropzoneError:
        raise
    except Exception as exc:
        raise _translate(exc, url, "connect") from exc
    try:
        key = transport.get_remote_server_key()
        return _key_family(key.get_name()), host_key_fingerprint(key), public_key_line(key)
    finally:
        transport.close()


# ---------------------------------------------------------------------------
# the dropzone
# ---------------------------------------------------------------------------


class SftpDropzone(FileDropzoneBase):
    """An SFTP dropzone session.  ``connect`` opens a private connection; a pool lends one."""

    def __init__(
        self,
        config: SftpConfig,
        session: _Session,
        *,
        release: Any = None,
    ) -> None:
        self.config = config
        self.export_path = config.export_path
        self.ack_path = config.ack_path
        self.atomic_write = config.atomic_write
        self.file_mode = config.file_mode
        self.label = session.url
        self._session: _Session | None = session
        self._release = release

    @classmethod
    def connect(cls, config: SftpConfig) -> SftpDropzone:
        return cls(config, _connect(config))

    @property
    def host_key_fingerprint(self) -> str:
        return self._s.fingerprint

    @property
    def _s(self) -> _Session:
        if self._session is None:
            raise errors.DropzoneUnavailableError(f"{self.label}: session is closed")
        return self._session

    def _host_key_fingerprint(self) -> str | None:
        return self._s.fingerprint

    @contextlib.contextmanager
    def _sftp(self, action: str) -> Iterator[_SFTPClient]:
        session = self._s
        if session.broken:
            # The connection already failed (a stalled server, a timeout): another
            # request would only wait out operation_timeout again — the cleanup
            # after a stalled upload used to double the time a thread was stuck.
            raise errors.DropzoneUnavailableError(f"{session.url}: connection lost; cannot {action}")
        try:
            yield session.sftp
        except errors.DropzoneError:
            raise
        except Exception as exc:
            translated = _translate(exc, session.url, action)
            if isinstance(translated, errors.TransientError) and not isinstance(exc, SftpStatusError):
                session.broken = True  # the connection, not the file system, failed
            raise translated from exc

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Anything but a project error (a bug, a cancellation raised from the progress
        # callback mid-packet) may have left the SFTP stream out of sync: never reuse it.
        if exc_type is not None and not issubclass(exc_type, errors.DropzoneError) and self._session is not None:
            self._session.broken = True
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

    def _join(self, directory: str, name: str) -> str:
        return posixpath.join(directory, name)

    def _stat(self, path: str) -> StatResult | None:
        # lstat below the configured directories: a link the ERP planted is reported,
        # never followed (the directories themselves may be links: the operator's choice).
        follow = path in (self.export_path, self.ack_path)
        with self._sftp(f"stat {path}") as sftp:
            try:
                attrs = sftp.stat(path) if follow else sftp.lstat(path)
            except SftpStatusError as exc:
                if exc.sftp_code in (FX_NO_SUCH_FILE, FX_NO_SUCH_PATH):
                    return None
                raise
        return _stat_result(attrs)

    def _check_regular(self, path: str) -> bool:
        """lstat before open (SFTP has no O_NOFOLLOW): False when nothing is there."""
        st = self._stat(path)
        if st is None:
            return False
        if not st.is_file:
            what = "a symbolic link" if st.is_link else "not a regular file"
            raise errors.UnsafePathError(f"{self.label}: {path} is {what}; not read (links are never followed)")
        return True

    def _listdir(self, directory: str) -> list[DirEntry]:
        with self._sftp(f"list {directory}") as sftp:
            try:
                attrs = sftp.listdir_attr(directory)
            except SftpStatusError as exc:
                if exc.sftp_code in (FX_NO_SUCH_FILE, FX_NO_SUCH_PATH):
                    # The translation would say "no such file"; say which directory.
                    raise errors.MissingDirectoryError(f"{self.label}: directory {directory} does not exist") from exc
                raise
        # READDIR attributes are lstat's (OpenSSH, asyncssh): links show as links.
        return [DirEntry(a.filename, _stat_result(a)) for a in attrs]

    def _open(self, sftp: _SFTPClient, path: str, flags: int, mode: int | None) -> bytes:
        attrs = paramiko.SFTPAttributes()
        if mode is not None:
            attrs.st_mode = mode
        t, msg = sftp._request(CMD_OPEN, path, flags, attrs)
        if t != CMD_HANDLE:
            raise SFTPError("Expected handle")
        return msg.get_binary()

    def _close_handle(self, sftp: _SFTPClient, handle: bytes) -> None:
        sftp._request(CMD_CLOSE, handle)

    def _write_new(
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
                handle = self._open(sftp, path, flags, self.file_mode)
        except errors.DropzoneError:
            # OpenSSH reports an exclusive create on an existing file as plain "Failure".
            st = None if session.broken else self._stat(path)
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
                handle = self._open(sftp, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC, self.file_mode)
        hasher = HashingLimiter(limit, self.label, path, progress)
        closed = False
        ok = False
        try:
            with self._sftp(f"write {path}") as sftp:
                self._pipelined_write(sftp, session, path, handle, chunks, hasher)
                if session.fsync:
                    sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle)
                closed = True  # even if CLOSE fails, the handle is gone
                self._close_handle(sftp, handle)
            ok = True
        finally:
            if not ok and not session.broken:
                with contextlib.suppress(Exception):
                    if not closed:
                        session.sftp._request(CMD_CLOSE, handle)
                with contextlib.suppress(Exception):
                    session.sftp.remove(path)
        return hasher.count, hasher.hexdigest()

    def _pipelined_write(
        self,
        sftp: _SFTPClient,
        session: _Session,
        path: str,
        handle: bytes,
        chunks: Iterable[bytes],
        hasher: HashingLimiter,
    ) -> None:
        req = session.write_size
        max_outstanding = max(4, MAX_IN_FLIGHT_BYTES // req)
        sink = _StatusSink()
        mode_sink = _StatusSink()
        # The open's mode is filtered by the server's umask: set it explicitly, pipelined.
        # Best effort: some servers (Windows) cannot chmod, and that must not stop orders.
        attrs = paramiko.SFTPAttributes()
        attrs.st_mode = self.file_mode
        sftp._async_request(mode_sink, CMD_FSETSTAT, handle, attrs)
        mode_sink.outstanding += 1
        offset = 0
        pending = bytearray()

        def send(piece: bytes | memoryview) -> None:
            nonlocal offset
            while sink.outstanding >= max_outstanding:
                sftp._read_response()
                if sink.error is not None:
                    raise sink.error
            sftp._async_request(sink, CMD_WRITE, handle, int64(offset), bytes(piece))
            sink.outstanding += 1
            offset += len(piece)

        for chunk in chunks:
            data = hasher.feed(chunk)
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
            hasher.done(hasher.count)
        if pending:
            send(pending)
        while sink.outstanding > 0 or mode_sink.outstanding > 0:
            sftp._read_response()
            if sink.error is not None:
                raise sink.error
        if sink.error is not None:
            raise sink.error
        if mode_sink.error is not None:
            log.warning("%s: could not set mode %o on %s: %s", self.label, self.file_mode, path, mode_sink.error)

    def _iter_file(self, path: str, chunk_size: int) -> Iterator[bytes]:
        session = self._s
        self._check_regular(path)
        with self._sftp(f"open {path}") as sftp:
            handle = self._open(sftp, path, SFTP_FLAG_READ, None)
        try:
            with self._sftp(f"read {path}") as sftp:
                yield from self._pipelined_read(sftp, session, handle)
        finally:
            if not session.broken:
                with contextlib.suppress(Exception):
                    session.sftp._request(CMD_CLOSE, handle)

    def _pipelined_read(self, sftp: _SFTPClient, session: _Session, handle: bytes) -> Iterator[bytes]:
        req = session.read_size
        max_outstanding = max(4, MAX_IN_FLIGHT_BYTES // req)
        sink = _ReadSink()
        queue: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
        next_offset = 0
        eof = False
        while True:
            while not eof and len(queue) < max_outstanding:
                num = sftp._async_request(sink, CMD_READ, handle, int64(next_offset), req)
                queue.append((num, next_offset, req))
                next_offset += req
            if not queue:
                return
            num, offset, length = queue.popleft()
            while num not in sink.replies:
                sftp._read_response()
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
                    try:
                        t, msg = sftp._request(CMD_READ, handle, int64(pos), end - pos)
                    except EOFError:
                        eof = True
                        break
                    if t != CMD_DATA:
                        raise SFTPError("Expected data")
                    data = msg.get_string()
                    if not data:
                        eof = True
                        break
                    yield data
                    pos += len(data)

    def _read_prefix(self, path: str, max_bytes: int) -> bytes | None:
        session = self._s
        if not self._check_regular(path):
            return None
        with self._sftp(f"open {path}") as sftp:
            try:
                handle = self._open(sftp, path, SFTP_FLAG_READ, None)
            except SftpStatusError as exc:
                if exc.sftp_code in (FX_NO_SUCH_FILE, FX_NO_SUCH_PATH):
                    return None
                raise
        out = bytearray()
        try:
            with self._sftp(f"read {path}") as sftp:
                while len(out) < max_bytes:
                    try:
                        t, msg = sftp._request(
                            CMD_READ, handle, int64(len(out)), min(max_bytes - len(out), session.read_size)
                        )
                    except EOFError:
                        break
                    if t != CMD_DATA:
                        raise SFTPError("Expected data")
                    data = msg.get_string()
                    if not data:
                        break
                    out += data
        finally:
            if not session.broken:
                with contextlib.suppress(Exception):
                    session.sftp._request(CMD_CLOSE, handle)
        return bytes(out)

    def _publish(self, tmp: str, final: str) -> bool:
        session = self._s
        if session.posix_rename:
            with self._sftp(f"rename {tmp} to {final}") as sftp:
                sftp._request(CMD_EXTENDED, "posix-rename@openssh.com", tmp, final)
            return True
        # Without posix-rename the plain SFTP rename refuses an existing target, which is
        # the safe direction: the caller re-checks what is there.
        return self._rename_noreplace(tmp, final)

    def _rename_noreplace(self, src: str, dst: str) -> bool:
        try:
            with self._sftp(f"rename {src} to {dst}") as sftp:
                sftp._request(CMD_RENAME, src, dst)
            return True
        except errors.DropzoneError:
            if self._s.broken:
                raise
            if self._stat(dst) is not None:
                return False
            raise

    def _remove(self, path: str) -> None:
        with self._sftp(f"remove {path}") as sftp:
            try:
                sftp.remove(path)
            except SftpStatusError as exc:
                if exc.sftp_code not in (FX_NO_SUCH_FILE, FX_NO_SUCH_PATH):
                    raise

    def _mkdir(self, path: str) -> None:
        try:
            with self._sftp(f"create directory {path}") as sftp:
                sftp.mkdir(path, 0o777)
        except errors.DropzoneError:
            if self._s.broken:
                raise
            st = self._stat(path)
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


# ---------------------------------------------------------------------------
# pool
# ---------------------------------------------------------------------------

_SALT = secrets.token_bytes(16)


def _pool_key(config: SftpConfig) -> tuple[Any, ...]:
    # Credentials are part of the key (as a salted digest, never the secret) so an
    # operator's password change is used at once rather than after idle expiry.
    h = hmac.new(_SALT, digestmod=hashlib.sha256)
    for secret in (config.password, config.ssh_key, config.ssh_key_passphrase):
        h.update(b"\x00" if secret is None else b"\x01" + secret.get_secret_value().encode())
    return (
        config.host,
        config.port,
        config.username,
        config.host_key,
        config.connect_timeout_seconds,
        config.operation_timeout_seconds,
        config.legacy_algorithms,
        h.hexdigest(),
    )


class SftpConnectionPool:
    """Reuses authenticated SFTP connections across activities (thread-safe).

    Connections are lent to one caller at a time, checked for liveness before
    reuse (a round trip only when idle for ``probe_after_idle_seconds``), closed after ``max_idle_seconds`` unused or ``max_age_seconds`` old,
    and at most ``max_idle`` are kept.  A connection that failed at the
    transport level is never returned to the pool.
    """

    def __init__(
        self,
        *,
        max_idle: int = 32,
        max_idle_seconds: float = 60.0,
        max_age_seconds: float = 3600.0,
        liveness_timeout: float = 5.0,
        probe_after_idle_seconds: float = 5.0,
    ) -> None:
        # max_idle matches the worker's default activity slots: a burst runs that
        # many deliveries at once, and every connection dropped for lack of room
        # costs a new SSH handshake (~100 ms of CPU on both ends) on the next one.
        self.max_idle = max_idle
        self.max_idle_seconds = max_idle_seconds
        self.max_age_seconds = max_age_seconds
        self.liveness_timeout = liveness_timeout
        self.probe_after_idle_seconds = probe_after_idle_seconds
        self._idle: dict[tuple[Any, ...], list[_Session]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.created = 0
        self.reused = 0
        self.discarded = 0

    def open(self, config: SftpConfig) -> SftpDropzone:
        """A pooled ``SftpDropzone``; its ``close()`` gives the connection back."""
        key = _pool_key(config)
        while True:
            session = self._take(key)
            if session is None:
                break
            if session.alive(self.liveness_timeout, trust_if_used_within=self.probe_after_idle_seconds):
                with self._lock:
                    self.reused += 1
                return SftpDropzone(config, session, release=lambda s, k=key: self._give_back(k, s))
            self._discard(session)
        session = _connect(config)
        with self._lock:
            self.created += 1
        return SftpDropzone(config, session, release=lambda s, k=key: self._give_back(k, s))

    @contextlib.contextmanager
    def acquire(self, config: SftpConfig) -> Iterator[SftpDropzone]:
        dz = self.open(config)
        try:
            yield dz
        except BaseException as exc:
            # Anything unexpected may have left the SFTP stream out of sync.
            if not isinstance(exc, errors.DropzoneError) and dz._session is not None:
                dz._session.broken = True
            raise
        finally:
            dz.close()

    def _take(self, key: tuple[Any, ...]) -> _Session | None:
        expired: list[_Session] = []
        try:
            with self._lock:
                self._expire_locked(expired)
                stack = self._idle.get(key)
                if not stack:
                    return None
                session = stack.pop()  # most recently used: likeliest alive
                if not stack:
                    del self._idle[key]
                return session
        finally:
            for s in expired:
                self._discard(s)

    def _give_back(self, key: tuple[Any, ...], session: _Session) -> None:
        now = time.monotonic()
        if session.broken or not session.transport.is_active() or now - session.created > self.max_age_seconds:
            self._discard(session)
            return
        session.last_used = now
        expired: list[_Session] = []
        with self._lock:
            if self._closed:
                expired.append(session)
            else:
                self._idle.setdefault(key, []).append(session)
                self._expire_locked(expired)
                total = sum(len(v) for v in self._idle.values())
                while total > self.max_idle:
                    oldest_key = min(self._idle, key=lambda k: self._idle[k][0].last_used)
                    expired.append(self._idle[oldest_key].pop(0))
                    if not self._idle[oldest_key]:
                        del self._idle[oldest_key]
                    total -= 1
        for s in expired:
            self._discard(s)

    def _expire_locked(self, out: list[_Session]) -> None:
        now = time.monotonic()
        for key in list(self._idle):
            keep = []
            for s in self._idle[key]:
                if now - s.last_used > self.max_idle_seconds or now - s.created > self.max_age_seconds:
                    out.append(s)
                else:
                    keep.append(s)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def _discard(self, session: _Session) -> None:
        with self._lock:
            self.discarded += 1
        session.close()

    def discard_idle(self) -> None:
        """Close every idle connection; the pool stays usable (e.g. after a server re-key)."""
        with self._lock:
            sessions = [s for stack in self._idle.values() for s in stack]
            self._idle.clear()
        for s in sessions:
            self._discard(s)

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sessions = [s for stack in self._idle.values() for s in stack]
            self._idle.clear()
        for s in sessions:
            s.close()

    def __enter__(self) -> SftpConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
