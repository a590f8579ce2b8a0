"""Dropzone connection configs: validation, storage form, display form.

A config arrives from an operator (CLI, API) or from the decrypted
``erp_connection.config_encrypted`` column.  ``parse_connection_config`` is the
one door: it returns a typed model or raises ``InvalidConfigError`` naming every
bad field.  Error messages are built here from the field location and the error
*type* only, never from pydantic's own text, because pydantic messages may quote
the input — and the input may be a password or a private key.

Secrets are ``SecretStr``: ``repr``/``str``/``model_dump_json`` never show them.
``config_to_storable`` reveals them (only for encrypting into the database),
``redacted`` replaces them with ``"***"`` (for display).
"""

from __future__ import annotations

import base64
import binascii
import os
import posixpath
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from dropzone import ssh_algorithms
from dropzone.errors import InvalidConfigError
from dropzone.webhooks import secret_bytes, validate_webhook_url

__all__ = [
    "SECRET_FIELDS",
    "ConnectionConfig",
    "FilesystemConfig",
    "FtpsConfig",
    "SftpConfig",
    "config_to_storable",
    "describe",
    "parse_connection_config",
    "redacted",
]

SECRET_FIELDS = ("password", "ssh_key", "ssh_key_passphrase", "webhook_secret")
REDACTED = "***"

# Host key pins: "SHA256:<unpadded base64 of 32 bytes>" (what `ssh-keygen -lf` prints)
# or one OpenSSH public key line "<type> <base64 blob> [comment]".
_FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
_KEY_TYPE_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|ssh-ed448)$")
# FTPS certificate pins: that form, or the hex `openssl x509 -fingerprint -sha256` prints.
_HEX_FINGERPRINT_RE = re.compile(r"^SHA256:(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$")
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]%]+$")
# Usernames vary widely (user@domain, DOMAIN\user, account.user): refuse only what
# cannot be a name at all.
_USER_RE = re.compile(r"^[^\x00-\x1f\x7f]+$")


def _clean_path(value: str, *, posix: bool) -> str:
    """Absolute, normalised, no '..', no control characters."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty absolute path")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    parts = value.split("/")
    if ".." in parts:
        raise ValueError("must not contain '..' components")
    if posix:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path (start with '/')")
        return posixpath.normpath(value) if value != "/" else value
    if not os.path.isabs(value):
        raise ValueError("must be an absolute path")
    return os.path.normpath(value)


def _parse_mode(value: Any) -> Any:
    # JSON has no octal literals: accept "0640" / "0o640" as well as 416.
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]{1,4}", text):
            raise ValueError("must be an octal permission like '0640'")
        return int(text, 8)
    return value


def validate_host_key_pin(value: str) -> str:
    """Return the normalised pin, or raise ValueError (message never quotes the value)."""
    text = value.strip()
    if text.startswith("SHA256:"):
        if not _FINGERPRINT_RE.match(text):
            raise ValueError("must be 'SHA256:<43 base64 characters>' or an OpenSSH public key line")
        return text.rstrip("=")
    parts = text.split()
    if len(parts) < 2 or not _KEY_TYPE_RE.match(parts[0]):
        raise ValueError(
            "must be 'SHA256:<fingerprint>' or an OpenSSH public key line like 'ssh-ed25519 AAAA…'"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not valid base64") from None
    # The blob starts with the key type as an SSH string: catch pasted mismatches.
    if len(blob) < 4:
        raise ValueError("public key blob is too short")
    n = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + n].decode("ascii", "replace") != parts[0]:
        raise ValueError("public key blob does not match its key type")
    return f"{parts[0]} {parts[1]}"


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    export_path: str
    ack_path: str | None = None
    atomic_write: bool = True
    poll_interval_seconds: int = Field(default=60, ge=1, le=86400)
    ack_timeout_seconds: int = Field(default=604800, ge=1, le=365 * 86400)
    file_mode: int = Field(default=0o640, ge=0, le=0o7777)
    # Status callbacks (dropzone/webhooks.py): where to POST each transition, and the
    # Standard Webhooks secret ("whsec_" + base64) that signs them.
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None

    _posix_paths: ClassVar[bool] = True

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return validate_webhook_url(value) if value else None

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        secret_bytes(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _webhook_pair(self) -> _Base:
        if (self.webhook_url is None) != (self.webhook_secret is None):
            raise ValueError("webhook_url and webhook_secret go together (give both or neither)")
        return self

    @field_validator("file_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return _parse_mode(value)

    @field_validator("export_path", "ack_path")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _clean_path(value, posix=cls._posix_paths)


class SftpConfig(_Base):
    """An ERP dropzone reached over SFTP."""

    mode: Literal["sftp"] = "sftp"
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=255)
    password: SecretStr | None = None
    ssh_key: SecretStr | None = None
    ssh_key_passphrase: SecretStr | None = None
    host_key: str | None = None
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    operation_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Only current SSH algorithms are offered; an old server's one legacy need is named here.
    legacy_algorithms: tuple[str, ...] = ()

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST_RE.match(value):
            raise ValueError("must be a host name or IP address")
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not _USER_RE.match(value) or value != value.strip():
            raise ValueError("must not contain control characters or surrounding spaces")
        return value

    @field_validator("legacy_algorithms")
    @classmethod
    def _legacy_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return ssh_algorithms.check_legacy(value)

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return validate_host_key_pin(value)

    @field_validator("ssh_key")
    @classmethod
    def _ssh_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not _PEM_RE.search(value.get_secret_value()):
            raise ValueError("must be a PEM or OpenSSH private key ('-----BEGIN … PRIVATE KEY-----')")
        return value

    @field_validator("password", "ssh_key_passphrase")
    @classmethod
    def _empty_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() == "":
            return None
        return value

    @model_validator(mode="after")
    def _credentials(self) -> SftpConfig:
        if self.password is None and self.ssh_key is None:
            raise ValueError("sftp needs a password or an ssh_key (or both)")
        return self

    @property
    def label(self) -> str:
        """The connection's one label (messages, summaries, tables); never a secret."""
        return f"sftp://{self.username}@{self.host}:{self.port}"


class FilesystemConfig(_Base):
    """An ERP dropzone that is a local or mounted (NFS/SMB) directory."""

    mode: Literal["filesystem"] = "filesystem"

    _posix_paths: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """The connection's one label (messages, summaries, tables); never a secret."""
        return f"file://{self.export_path}"


def validate_certificate_pin(value: str) -> str:
    """``SHA256:<base64>`` or ``SHA256:<hex>`` (colons allowed) → the base64 form, or ValueError."""
    text = value.strip()
    if _FINGERPRINT_RE.match(text):
        return text.rstrip("=")
    if _HEX_FINGERPRINT_RE.match(text):
        digest = binascii.unhexlify(text.removeprefix("SHA256:").replace(":", ""))
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    raise ValueError("must be 'SHA256:<43 base64 characters>' or 'SHA256:<64 hex digits, colons allowed>'")


class FtpsConfig(_Base):
    """An ERP dropzone reached over FTP with explicit TLS (AUTH TLS; dropzone/transports/ftps/)."""

    mode: Literal["ftps"] = "ftps"
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(default=21, ge=1, le=65535)
    username: str = Field(min_length=1, max_length=255)
    password: SecretStr
    # The certificate chains to ca_bundle (PEM, on the worker) and/or has the pinned SHA-256 (else: system CAs).
    ca_bundle: str | None = None
    server_fingerprint: str | None = None
    # Plain FTP: no TLS at all, the password in clear text. Only when said so.
    allow_insecure_plaintext: bool = False
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    operation_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    # Host names and user names follow SFTP's rules.
    _host = field_validator("host")(SftpConfig._host.__func__)  # type: ignore[attr-defined]
    _username = field_validator("username")(SftpConfig._username.__func__)  # type: ignore[attr-defined]

    @field_validator("server_fingerprint")
    @classmethod
    def _server_fingerprint(cls, value: str | None) -> str | None:
        return validate_certificate_pin(value) if value and value.strip() else None

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: str | None) -> str | None:
        return _clean_path(value, posix=False) if value and value.strip() else None

    @model_validator(mode="after")
    def _checks(self) -> FtpsConfig:
        if not self.password.get_secret_value():
            raise ValueError("ftps needs a password")
        if self.allow_insecure_plaintext and (self.ca_bundle or self.server_fingerprint):
            raise ValueError("allow_insecure_plaintext turns TLS off: it cannot go with ca_bundle or server_fingerprint")
        return self

    @property
    def label(self) -> str:
        """The connection's one label (messages, summaries, tables); never a secret."""
        scheme = "ftp" if self.allow_insecure_plaintext else "ftps"
        return f"{scheme}://{self.username}@{self.host}:{self.port}"


AnyConfig = SftpConfig | FilesystemConfig | FtpsConfig
ConnectionConfig = Annotated[AnyConfig, Field(discriminator="mode")]
_ADAPTER: TypeAdapter[AnyConfig] = TypeAdapter(ConnectionConfig)

# Our own wording per pydantic error type; ctx values used are limits, never input.
_MESSAGES: dict[str, str] = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "literal_error": "must be one of {expected}",
    "union_tag_invalid": "must be one of {expected_tags}",
    "union_tag_not_found": "field required (one of 'sftp', 'filesystem', 'ftps')",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must not be empty",
    "string_too_long": "is too long (at most {max_length} characters)",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "tuple_type": "must be a list",
    "finite_number": "must be a finite number",
}


def _describe_error(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("sftp", "filesystem", "ftps"))
    if err.get("type") in ("union_tag_not_found", "union_tag_invalid"):
        loc = "mode"
    etype = err.get("type", "")
    if etype in ("value_error", "assertion_error"):
        # Our own validators: the message is ours (ValueError text), never the value.
        exc = (err.get("ctx") or {}).get("error")
        msg = str(exc) if exc is not None else "invalid value"
    else:
        template = _MESSAGES.get(etype, "invalid value")
        ctx = {k: v for k, v in (err.get("ctx") or {}).items() if isinstance(v, (int, float, str))}
        try:
            msg = template.format(**ctx)
        except (KeyError, IndexError, ValueError):
            msg = template.split("{")[0].strip() or "invalid value"
    return f"{loc or 'config'}: {msg}"


def parse_connection_config(data: Any) -> AnyConfig:
    """Validate ``data`` into a config; ``InvalidConfigError`` names every bad field."""
    if isinstance(data, (SftpConfig, FilesystemConfig, FtpsConfig)):
        return data
    if not isinstance(data, dict):
        raise InvalidConfigError("invalid connection config: must be a JSON object")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = {_describe_error(e) for e in exc.errors(include_input=False, include_url=False)}
    # Raised outside the except block so the ValidationError (whose text quotes the
    # input, secrets included) is not even kept as __context__.
    # The "password or ssh_key" rule runs only once every field is valid; name it anyway.
    if data.get("mode") == "sftp" and not data.get("password") and not data.get("ssh_key"):
        problems.add("config: sftp needs a password or an ssh_key (or both)")
    raise InvalidConfigError("invalid connection config: " + "; ".join(sorted(problems)))


def config_to_storable(cfg: AnyConfig) -> dict[str, Any]:
    """Plain dict WITH secrets revealed — only for encrypting into the database."""
    data = cfg.model_dump(mode="python")
    for name in SECRET_FIELDS:
        value = getattr(cfg, name, None)
        if name in data:
            data[name] = value.get_secret_value() if value is not None else None
    return data


def redacted(cfg: AnyConfig) -> dict[str, Any]:
    """Plain dict for display: every secret that is set becomes ``"***"``."""
    data = cfg.model_dump(mode="python")
    for name in SECRET_FIELDS:
        if name in data:
            data[name] = REDACTED if getattr(cfg, name, None) is not None else None
    return data


def describe(cfg: AnyConfig) -> str:
    """A short, credential-free label for messages: ``sftp://user@host:22`` or ``file:///dir``."""
    return cfg.label
