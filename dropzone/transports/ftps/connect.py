"""How FTPS connects: TCP, ``AUTH TLS``, the server certificate checked, then the login.

Explicit TLS (RFC 4217) with the standard library's ``ftplib.FTP_TLS``:

1. TCP to host:port within ``connect_timeout_seconds``; every later read, write
   and data connection is bounded by ``operation_timeout_seconds``.
2. ``AUTH TLS``, then the server certificate is verified: against ``ca_bundle``
   (chain and host name), or against the pinned ``server_fingerprint`` (SHA-256
   of the certificate), or both when both are set, or against the system's CAs
   when neither is. A certificate that fails is refused before ``USER`` is sent:
   no credential ever reaches a server we could not verify (``HOST_KEY_MISMATCH``,
   naming what the server presents so that its operator can confirm it).
3. ``USER``/``PASS``, then ``PBSZ 0``/``PROT P``: every data connection (passive
   mode only) is TLS too, checked against the same pin and resuming the control
   channel's TLS session (servers such as vsftpd and FileZilla require that).

Plain FTP (no TLS at all, credentials in clear text) only when the config says
``allow_insecure_plaintext: true``; otherwise a server that refuses ``AUTH TLS``
fails the connection (``INVALID_CONFIG``) before anything else is sent.
"""

from __future__ import annotations

import base64
import contextlib
import ftplib
import hashlib
import hmac
import socket
import ssl
from typing import TYPE_CHECKING, Any

from dropzone import errors
from dropzone.transports.ftps.errors import reply_code, translate

if TYPE_CHECKING:
    from dropzone.connection_config import FtpsConfig

__all__ = ["FtpsClient", "certificate_fingerprint", "connect", "fetch_certificate_fingerprint"]

_AUTH_STEP = "start TLS (AUTH TLS)"
_PLAINTEXT_HINT = "; plain FTP is used only when the config sets allow_insecure_plaintext: true"


def certificate_fingerprint(der: bytes) -> str:
    """``SHA256:<unpadded base64>`` of a DER certificate: the form ``server_fingerprint`` pins."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def _peer_fingerprint(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    if der is None:  # only a server without a certificate (anonymous ciphers, never offered)
        raise errors.HostKeyError("the server presented no certificate")
    return certificate_fingerprint(der)


def _check_pin(sock: ssl.SSLSocket, pin: str, label: str, channel: str) -> str:
    presented = _peer_fingerprint(sock)
    if not hmac.compare_digest(presented, pin):
        raise errors.HostKeyError(
            f"{label}: the server's certificate on the {channel} channel is {presented}, not the pinned "
            f"{pin}; nothing was sent (check the new certificate with the server's operator, then "
            "update server_fingerprint)"
        )
    return presented


class FtpsClient(ftplib.FTP_TLS):
    """``FTP_TLS`` whose data connections are checked like the control connection."""

    pin: str | None = None
    label: str = ""
    representation = ""  # the last TYPE sent: ftplib's MLSD switches to ASCII (TYPE A)

    def putcmd(self, line: str) -> None:
        if line.startswith("TYPE "):
            self.representation = line[5:].strip()
        super().putcmd(line)  # type: ignore[misc]

    def binary(self) -> None:
        """TYPE I before a file transfer, unless it is still in effect (ASCII would alter bytes)."""
        if self.representation != "I":
            self.voidcmd("TYPE I")

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if not self._prot_p:  # type: ignore[attr-defined]
            return conn, size
        try:
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
            if self.pin is not None:
                _check_pin(conn, self.pin, self.label, "data")  # type: ignore[arg-type]
        except BaseException:
            conn.close()
            raise
        return conn, size


def _tls_context(config: FtpsConfig) -> ssl.SSLContext:
    if config.ca_bundle:
        try:
            context = ssl.create_default_context(cafile=config.ca_bundle)
        except (OSError, ssl.SSLError, ValueError):
            raise errors.InvalidConfigError(
                f"{config.label}: ca_bundle {config.ca_bundle} cannot be read as PEM certificates"
            ) from None
    elif config.server_fingerprint:
        # Pinned alone: the certificate's SHA-256 is the whole check (made before USER),
        # so chain and host name are not asked for (a self-signed certificate is fine).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _open(config: FtpsConfig, context: ssl.SSLContext, step: list[str]) -> FtpsClient:
    client = FtpsClient(context=context, timeout=config.connect_timeout_seconds)
    client.label = config.label
    step[0] = "connect"
    client.connect(config.host, config.port, timeout=config.connect_timeout_seconds)
    client.timeout = config.operation_timeout_seconds
    client.sock.settimeout(config.operation_timeout_seconds)
    if not config.allow_insecure_plaintext:
        step[0] = _AUTH_STEP
        client.auth()
    return client


def connect(config: FtpsConfig) -> tuple[FtpsClient, str | None]:
    """A logged-in client and the server certificate's fingerprint (None for plain FTP)."""
    label = config.label
    context = _tls_context(config) if not config.allow_insecure_plaintext else ssl.create_default_context()
    step = ["connect"]
    client: FtpsClient | None = None
    try:
        client = _open(config, context, step)
        fingerprint = None
        if not config.allow_insecure_plaintext:
            step[0] = "check the server certificate"
            fingerprint = _peer_fingerprint(client.sock)
            if config.server_fingerprint:
                client.pin = config.server_fingerprint
                _check_pin(client.sock, config.server_fingerprint, label, "control")
        step[0] = "log in"
        client.login(config.username, config.password.get_secret_value(), secure=False)
        if not config.allow_insecure_plaintext:
            step[0] = "protect the data channel (PBSZ/PROT P)"
            client.prot_p()
        step[0] = "set binary mode (TYPE I)"
        client.voidcmd("TYPE I")
        # MLST/MLSD report these facts by default on most servers; ask in case not.
        with contextlib.suppress(ftplib.error_perm, ftplib.error_temp, ftplib.error_reply):
            client.sendcmd("OPTS MLST type;size;modify;")
        return client, fingerprint
    except Exception as exc:
        if client is not None:
            client.close()
        translated = translate(exc, label, step[0])
        if isinstance(exc, ssl.SSLCertVerificationError):
            translated = errors.HostKeyError(f"{translated.message}{_presented(config)}")
        elif step[0] == _AUTH_STEP and reply_code(exc) is not None:  # a server without TLS
            translated = errors.InvalidConfigError(f"{translated.message}{_PLAINTEXT_HINT}")
        if translated is exc:
            raise
        raise translated from exc


def fetch_certificate_fingerprint(config: FtpsConfig) -> str:
    """The fingerprint of the certificate the server presents, without verifying or logging in."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    step = ["connect"]
    client: FtpsClient | None = None
    try:
        client = _open(config, context, step)
        return _peer_fingerprint(client.sock)
    except Exception as exc:
        translated = translate(exc, config.label, step[0])
        if translated is exc:
            raise
        raise translated from exc
    finally:
        if client is not None:
            client.close()


def _presented(config: FtpsConfig) -> str:
    """What the refused server presents, for the operator to confirm (best effort)."""
    try:
        fingerprint = fetch_certificate_fingerprint(config)
    except errors.DropzoneError:
        return "; nothing was sent"
    return (
        f"; nothing was sent; the server presents {fingerprint} (once its operator confirms it, "
        "set server_fingerprint to it or give the ca_bundle that signed it)"
    )
