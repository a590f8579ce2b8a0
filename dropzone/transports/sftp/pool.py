"""``SftpConnectionPool``: authenticated SFTP connections reused across activities.

An SSH handshake costs ~100 ms of CPU on both ends, so a worker keeps the
connections its deliveries gave back and lends them again, keyed by endpoint
and credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from dropzone import errors
from dropzone.connection_config import SftpConfig
from dropzone.transports.sftp.connect import Session, connect
from dropzone.transports.sftp.transport import SftpTransport

__all__ = ["SftpConnectionPool"]

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
    reuse (a round trip only when idle for ``probe_after_idle_seconds``),
    closed after ``max_idle_seconds`` unused or ``max_age_seconds`` old, and at
    most ``max_idle`` are kept.  A connection that failed at the transport
    level is never returned to the pool.
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
        self._idle: dict[tuple[Any, ...], list[Session]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.created = 0
        self.reused = 0
        self.discarded = 0

    def open(self, config: SftpConfig) -> SftpTransport:
        """A pooled ``SftpTransport``; its ``close()`` gives the connection back."""
        key = _pool_key(config)
        while True:
            session = self._take(key)
            if session is None:
                break
            if session.alive(self.liveness_timeout, trust_if_used_within=self.probe_after_idle_seconds):
                with self._lock:
                    self.reused += 1
                return SftpTransport(config, session, release=lambda s, k=key: self._give_back(k, s))
            self._discard(session)
        session = connect(config)
        with self._lock:
            self.created += 1
        return SftpTransport(config, session, release=lambda s, k=key: self._give_back(k, s))

    @contextlib.contextmanager
    def acquire(self, config: SftpConfig) -> Iterator[SftpTransport]:
        transport = self.open(config)
        try:
            yield transport
        except BaseException as exc:
            # Anything unexpected may have left the SFTP stream out of sync.
            if not isinstance(exc, errors.DropzoneError):
                transport.mark_broken()
            raise
        finally:
            transport.close()

    def _take(self, key: tuple[Any, ...]) -> Session | None:
        expired: list[Session] = []
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

    def _give_back(self, key: tuple[Any, ...], session: Session) -> None:
        now = time.monotonic()
        if session.broken or not session.transport.is_active() or now - session.created > self.max_age_seconds:
            self._discard(session)
            return
        session.last_used = now
        expired: list[Session] = []
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

    def _expire_locked(self, out: list[Session]) -> None:
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

    def _discard(self, session: Session) -> None:
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
