"""How a process reaches Temporal: plaintext, TLS, mTLS, or an API key (Temporal Cloud).

``connect_options`` reads and checks the files the settings name before any
network I/O, so a missing file, a key readable by others or a key that does
not belong to its certificate fails naming the setting. ``describe_failure``
turns the SDK's connection error (one long Rust debug string) into one line
that names the setting to check; the server's own words are never repeated,
so nothing a proxy or server says can leak into a log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from temporalio.service import TLSConfig

from dropzone.errors import InvalidConfigError
from dropzone.secret_files import require_owner_only
from dropzone.settings import Settings

TLS = "DROPZONE_TEMPORAL_TLS"
CA_FILE = "DROPZONE_TEMPORAL_TLS_CA_FILE"
SERVER_NAME = "DROPZONE_TEMPORAL_TLS_SERVER_NAME"
CERT_FILE = "DROPZONE_TEMPORAL_TLS_CERT_FILE"
KEY_FILE = "DROPZONE_TEMPORAL_TLS_KEY_FILE"
API_KEY = "DROPZONE_TEMPORAL_API_KEY"
API_KEY_FILE = "DROPZONE_TEMPORAL_API_KEY_FILE"
# Every variable that secures the connection: the embedded dev stack clears them
# for its own plaintext server on loopback.
CONNECTION_VARIABLES = (TLS, CA_FILE, SERVER_NAME, CERT_FILE, KEY_FILE, API_KEY, API_KEY_FILE)


@dataclass(frozen=True)
class ConnectOptions:
    """What ``Client.connect`` gets besides address and namespace, and where it came from."""

    tls: TLSConfig | bool
    api_key: str | None = None
    api_key_setting: str | None = None  # the variable the key came from, for messages
    client_cert: bool = False

    @property
    def uses_tls(self) -> bool:
        return self.tls is not False


def connect_options(settings: Settings) -> ConnectOptions:
    api_key, api_key_setting = _api_key(settings)
    cert_file, key_file = settings.temporal_tls_cert_file, settings.temporal_tls_key_file
    if (cert_file is None) != (key_file is None):
        given, missing = (CERT_FILE, KEY_FILE) if key_file is None else (KEY_FILE, CERT_FILE)
        raise InvalidConfigError(f"{given} is set but {missing} is not: mTLS needs both the certificate and its key")
    wants_tls = any(
        value is not None
        for value in (settings.temporal_tls_ca_file, settings.temporal_tls_server_name, cert_file, api_key)
    )
    if settings.temporal_tls is False:
        if api_key is not None:
            raise InvalidConfigError(
                f"{api_key_setting} needs TLS, but {TLS}=false: an API key never travels in plaintext"
            )
        if wants_tls:
            raise InvalidConfigError(f"{TLS}=false, but TLS settings are set ({CA_FILE}, {CERT_FILE} ...): choose one")
        return ConnectOptions(tls=False)
    if not wants_tls:
        return ConnectOptions(tls=bool(settings.temporal_tls))
    ca = _read_ca(settings.temporal_tls_ca_file) if settings.temporal_tls_ca_file else None
    cert = key = None
    if cert_file is not None and key_file is not None:
        cert, key = _read_client_pair(cert_file, key_file)
    tls = TLSConfig(
        server_root_ca_cert=ca,
        domain=settings.temporal_tls_server_name,
        client_cert=cert,
        client_private_key=key,
    )
    return ConnectOptions(tls=tls, api_key=api_key, api_key_setting=api_key_setting, client_cert=cert is not None)


def _api_key(settings: Settings) -> tuple[str | None, str | None]:
    if settings.temporal_api_key is not None and settings.temporal_api_key_file is not None:
        raise InvalidConfigError(f"set {API_KEY} or {API_KEY_FILE}, not both")
    if settings.temporal_api_key is not None:
        return settings.temporal_api_key.get_secret_value().strip(), API_KEY
    if settings.temporal_api_key_file is None:
        return None, None
    path = settings.temporal_api_key_file
    key = _read(path, API_KEY_FILE, secret=True).decode("utf-8", errors="replace").strip()
    if not key:
        raise InvalidConfigError(f"{API_KEY_FILE} {path} is empty")
    return key, API_KEY_FILE


def _read(path: Path, setting: str, *, secret: bool = False) -> bytes:
    if secret:
        require_owner_only(path, setting)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidConfigError(f"cannot read {setting} {path}: {exc.strerror}") from None


def _certificates(path: Path, setting: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, setting)
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidConfigError(f"{setting} {path} holds no PEM certificate") from None


def _read_ca(path: Path) -> bytes:
    return _certificates(path, CA_FILE)[0]


def _read_client_pair(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    cert_pem, chain = _certificates(cert_file, CERT_FILE)
    leaf = chain[0]
    if leaf.not_valid_after_utc < datetime.now(UTC):
        raise InvalidConfigError(f"{CERT_FILE} {cert_file} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    key_pem = _read(key_file, KEY_FILE, secret=True)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise InvalidConfigError(f"{KEY_FILE} {key_file} is encrypted: give the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidConfigError(f"{KEY_FILE} {key_file} holds no PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise InvalidConfigError(f"{KEY_FILE} {key_file} is not the key of the certificate in {CERT_FILE} {cert_file}")
    return cert_pem, key_pem


# --- connection failures ---------------------------------------------------------------

# (substring of the SDK's error, what it means, what to do); first match wins.
Rule = tuple[str, str, Callable[[ConnectOptions], str]]
_ADDRESS = "check DROPZONE_TEMPORAL_ADDRESS"
_PLAINTEXT = f"check {TLS} and {CA_FILE} (unset them for a plaintext server)"
_RULES: tuple[Rule, ...] = (
    ("ConnectionRefused", "connection refused", lambda o: _ADDRESS),
    ("dns error", "unknown host", lambda o: _ADDRESS),
    ("UnknownIssuer", "TLS handshake failed: the server's certificate is not signed by a trusted CA",
     lambda o: f"check {CA_FILE}"),
    ("NotValidForName", "TLS handshake failed: the server's certificate is not valid for this host name",
     lambda o: f"check {SERVER_NAME} (or {CA_FILE})"),
    ("Expired", "TLS handshake failed: the server's certificate has expired or is not valid yet",
     lambda o: f"check {CA_FILE}"),
    ("InvalidCertificate", "TLS handshake failed: the server's certificate was refused", lambda o: f"check {CA_FILE}"),
    ("InvalidContentType", "TLS handshake failed: the server does not speak TLS", lambda o: _PLAINTEXT),
    ("InvalidMessage", "TLS handshake failed: the server does not speak TLS", lambda o: _PLAINTEXT),
    ("H2NotNegotiated", "the TLS endpoint does not offer HTTP/2 (ALPN h2), which gRPC needs",
     lambda o: f"{_ADDRESS} (a TLS proxy in front of Temporal must pass HTTP/2)"),
    ("PrivateKeyParseError", "the client key cannot be used", lambda o: f"check {KEY_FILE}"),
    ("AlertReceived", "TLS handshake failed: the server refused the client certificate", lambda o: _cert_advice(o)),
    ("Unauthenticated", "the server refused the credentials", lambda o: _credential_advice(o)),
    ("PermissionDenied", "the credentials are not allowed this namespace",
     lambda o: f"{_credential_advice(o)}, and DROPZONE_TEMPORAL_NAMESPACE"),
)


def _cert_advice(options: ConnectOptions) -> str:
    return f"check {CERT_FILE} and {KEY_FILE}" if options.client_cert else f"set {CERT_FILE} and {KEY_FILE} (mTLS)"


def _credential_advice(options: ConnectOptions) -> str:
    if options.api_key_setting:
        return f"check {options.api_key_setting}"
    if options.client_cert:
        return f"check {CERT_FILE} and {KEY_FILE}"
    return f"set {API_KEY_FILE}, or {CERT_FILE} and {KEY_FILE}"


def describe_failure(settings: Settings, options: ConnectOptions, error: BaseException) -> str:
    """One line: where, what happened, what to do."""
    where = f"cannot reach Temporal at {settings.temporal_address} (namespace {settings.temporal_namespace})"
    text = str(error)
    for needle, reason, advice in _RULES:
        if needle in text:
            return f"{where}: {reason} — {advice(options)}"
    # The TCP (and TLS) connection came up, then the server hung up (the wording varies with timing).
    hung_up = any(marker in text for marker in ("transport error", "connection closed"))
    if "after connection" in text and not hung_up:  # it answered, but not as Temporal would
        return f"{where}: the server there does not answer as Temporal does — {_ADDRESS}"
    if hung_up:
        if not options.uses_tls:
            return f"{where}: the server closed the connection — it may require TLS: set {TLS}=true or {CA_FILE}"
        maybe = "" if options.client_cert else "it may require a client certificate: "
        return f"{where}: the server closed the connection after the TLS handshake — {maybe}{_cert_advice(options)}"
    return f"{where} — {_ADDRESS}"
