"""How SFTP connects: socket, key exchange, host-key check, authentication, the SFTP channel.

In this order, each bounded by a timeout: our own TCP socket (TCP_NODELAY,
connect timeout; sends bounded by ``SendBoundSocket``), key exchange offering
only the allowed algorithms (``offer``), the host key checked against the pin
(``negotiate_verified``) BEFORE any authentication request, then public key
and/or password authentication, then the SFTP subsystem with the server's
request-size limits. ``connect`` returns the ``Session`` a transport uses;
``fetch_host_key`` stops after key exchange, for an operator to pin the key.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from dropzone import errors, ssh_algorithms
from dropzone.connection_config import SftpConfig
from dropzone.transports.sftp import _paramiko
from dropzone.transports.sftp.errors import NoCommonAlgorithm, translate
from dropzone.transports.sftp.keys import (
    host_key_fingerprint,
    key_family,
    key_type_candidates,
    load_private_key,
    pin_matches,
    public_key_line,
    remember_key_types,
)

__all__ = ["SendBoundSocket", "Session", "connect", "fetch_host_key"]

CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_MAX_PACKET = 32 * 1024
KEEPALIVE_SECONDS = 30


@dataclass
class Session:
    """One authenticated SSH transport with its SFTP channel (thread-confined while lent)."""

    transport: paramiko.Transport
    sftp: _paramiko.SFTPClient
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


class SendBoundSocket:
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


def offer(transport: paramiko.Transport, key_types: tuple[str, ...] | None, legacy: tuple[str, ...]) -> None:
    """Offer only current algorithms plus the legacy ones named (``dropzone.ssh_algorithms``)."""
    allowed = ssh_algorithms.allowed(legacy)
    implemented = _paramiko.implemented_algorithms()
    opts = transport.get_security_options()
    opts.kex = tuple(k for k in allowed["kex"] if k in implemented["kex"])
    opts.ciphers = tuple(c for c in allowed["ciphers"] if c in implemented["ciphers"])
    opts.digests = tuple(m for m in allowed["macs"] if m in implemented["macs"])
    keys = tuple(k for k in allowed["keys"] if k in implemented["keys"])
    opts.key_types = tuple(k for k in key_types if k in keys) if key_types else keys
    # Signature algorithms for our own key (public key authentication): the same.
    _paramiko.set_pubkey_algorithms(transport, keys)


def _open_socket(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def negotiate(
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
        transport = _paramiko.Transport(
            SendBoundSocket(sock, send_stall_seconds or timeout),  # type: ignore[arg-type]
            default_window_size=CHANNEL_WINDOW,
            default_max_packet_size=CHANNEL_MAX_PACKET,
        )
    except BaseException:
        sock.close()
        raise
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        offer(transport, key_types, legacy)
        transport.start_client(timeout=timeout)
        if not transport.is_active() or transport.host_key is None:
            raise TimeoutError("SSH negotiation did not finish")
        return transport
    except BaseException:
        transport.close()
        raise


def negotiate_verified(config: SftpConfig, url: str) -> tuple[paramiko.Transport, str]:
    """Connect and check the host key against the pin, before any authentication."""
    pin = config.host_key
    seen: list[str] = []
    unmatched: IncompatiblePeer | None = None  # kept from the widest offer, for the message
    candidates = key_type_candidates(config.host, config.port, pin)
    for i, key_types in enumerate(candidates):
        last = i == len(candidates) - 1
        try:
            transport = negotiate(
                config.host,
                config.port,
                config.connect_timeout_seconds,
                key_types,
                send_stall_seconds=config.operation_timeout_seconds,
                legacy=config.legacy_algorithms,
            )
        except IncompatiblePeer as exc:
            if isinstance(exc, NoCommonAlgorithm) and exc.what != "host key algorithm":
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
            raise errors.HostKeyUnknownError(
                f"{url}: host key {fingerprint} ({key_family(key.get_name())}) is not trusted; "
                "verify it with the server's operator and pin it (dropzone connections test ID --trust SHA256:…)"
            )
        if pin_matches(pin, key):
            remember_key_types(config.host, config.port, pin, key_types)
            return transport, fingerprint
        transport.close()
        presented = f"{fingerprint} ({key_family(key.get_name())})"
        if presented not in seen:
            seen.append(presented)
        if not pin.startswith("SHA256:"):
            break  # a key line names its family: the server's key of that family differs
    raise errors.HostKeyError(
        f"{url}: host key mismatch: server presented {', '.join(seen) or 'no usable key'}, which does "
        "not match the pinned host_key; the server may have been replaced or re-keyed"
    )


def authenticate(transport: paramiko.Transport, config: SftpConfig) -> None:
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


def connect(config: SftpConfig) -> Session:
    """An authenticated session on the server ``config`` names; project errors only."""
    url = config.label
    transport: paramiko.Transport | None = None
    try:
        transport, fingerprint = negotiate_verified(config, url)
        authenticate(transport, config)
        transport.set_keepalive(KEEPALIVE_SECONDS)
        chan = transport.open_session(
            window_size=CHANNEL_WINDOW,
            max_packet_size=CHANNEL_MAX_PACKET,
            timeout=config.operation_timeout_seconds,
        )
        chan.settimeout(config.operation_timeout_seconds)
        chan.invoke_subsystem("sftp")
        sftp = _paramiko.SFTPClient(chan)
        write_size, read_size = sftp.limits()
        exts = sftp.server_extensions
        return Session(
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
        raise translate(exc, url, action) from exc


def fetch_host_key(
    host: str, port: int = 22, timeout: float = 10.0, *, legacy_algorithms: tuple[str, ...] = ()
) -> tuple[str, str, str]:
    """(key type, ``SHA256:`` fingerprint, public key line) of the server, without authenticating.

    For ``connections test --trust``: show the operator what they are about to pin.
    """
    url = f"sftp://{host}:{port}"  # no user yet: nobody logs in
    try:
        transport = negotiate(host, port, timeout, None, legacy=legacy_algorithms)
    except errors.DropzoneError:
        raise
    except Exception as exc:
        raise translate(exc, url, "connect") from exc
    try:
        key = transport.get_remote_server_key()
        return key_family(key.get_name()), host_key_fingerprint(key), public_key_line(key)
    finally:
        transport.close()
