"""Fernet encryption of ERP connection configs (``erp_connection.config_encrypted``).

Keys come from ``DROPZONE_CONFIG_KEYS`` as a list: the first key encrypts, every
key decrypts. The connection id is encrypted along with the config and checked
on decrypt, so a ``config_encrypted`` copied onto another row is refused rather
than used for that row's orders. Rotating means putting a new key first, running
``Ledger.rotate_keys()`` (which re-encrypts every row with it), and only then
dropping the old key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from dropzone.errors import ConfigBindingError, ConfigKeyError, InvalidConfigError

KEYS_SETTING = "DROPZONE_CONFIG_KEYS"
# Marks the document {"dropzone_config": 1, "connection_id": ..., "config": {...}}
# that binds a config to its row; a bare config is an older, unbound row.
BOUND_FORMAT = "dropzone_config"


class ConfigCipher:
    """Encrypts connection configs; holds key material, so it never prints it."""

    __slots__ = ("_fernet", "_key_count")

    def __init__(self, keys: Sequence[str]) -> None:
        # A bare string is a Sequence[str] too: treat it as one key rather than
        # as a list of one-character "keys".
        if isinstance(keys, str | bytes):
            keys = [keys]  # type: ignore[list-item]
        cleaned = [key.strip() for key in keys if key and key.strip()]
        if not cleaned:
            raise InvalidConfigError(f"no config encryption key configured ({KEYS_SETTING})")
        self._fernet = MultiFernet([_fernet_for(key, i, len(cleaned)) for i, key in enumerate(cleaned)])
        self._key_count = len(cleaned)

    @property
    def key_count(self) -> int:
        return self._key_count

    def encrypt(self, config: dict[str, Any], *, connection_id: UUID | str | None = None) -> str:
        """Encrypt ``config``; with ``connection_id`` the id goes inside, bound to that row."""
        if not isinstance(config, dict):
            raise InvalidConfigError(f"connection config must be a JSON object, got {type(config).__name__}")
        document: dict[str, Any] = config
        if connection_id is not None:
            document = {BOUND_FORMAT: 1, "connection_id": str(connection_id), "config": config}
        try:
            plaintext = json.dumps(document, separators=(",", ":"), sort_keys=True)
        except (TypeError, ValueError) as exc:
            # json's message names the offending type, never a value.
            raise InvalidConfigError(f"connection config is not JSON-serialisable: {exc}") from exc
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str, *, connection_id: UUID | str) -> dict[str, Any]:
        """The config of row ``connection_id``; ``ConfigBindingError`` if it was written for another row.

        Rows written before the binding (a bare config inside) still decrypt;
        ``rotate`` binds them.
        """
        return self._open(token, connection_id)

    def rotate(self, token: str, *, connection_id: UUID | str | None = None) -> str:
        """Re-encrypt ``token`` with the first key; with ``connection_id`` also bind it to that row."""
        if connection_id is None:
            try:
                return self._fernet.rotate(token.encode("ascii")).decode("ascii")
            except (InvalidToken, UnicodeEncodeError) as exc:
                raise ConfigKeyError(_undecryptable(connection_id)) from exc
        return self.encrypt(self._open(token, connection_id), connection_id=connection_id)

    def _open(self, token: str, connection_id: UUID | str) -> dict[str, Any]:
        try:
            plaintext = self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError) as exc:
            raise ConfigKeyError(_undecryptable(connection_id)) from exc
        try:
            document = json.loads(plaintext)
        except ValueError as exc:
            raise InvalidConfigError(f"connection {connection_id}: stored config is not valid JSON") from exc
        if not isinstance(document, dict):
            raise InvalidConfigError(f"connection {connection_id}: stored config is not a JSON object")
        if BOUND_FORMAT not in document:
            return document  # written before configs were bound to their row
        if str(document.get("connection_id")) != str(connection_id):
            # Copied from another row (or the ids were swapped): using it would send
            # this connection's orders to the other connection's ERP.
            raise ConfigBindingError(
                f"connection {connection_id}: stored config was encrypted for connection "
                f"{document.get('connection_id')} (config_encrypted copied between rows); refusing to use it: "
                "restore this row's own config_encrypted"
            )
        config = document.get("config")
        if not isinstance(config, dict):
            raise InvalidConfigError(f"connection {connection_id}: stored config is not a JSON object")
        return config

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode("ascii")

    def __repr__(self) -> str:
        return f"ConfigCipher(<{self._key_count} key(s) redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would write the keys out (e.g. into a multiprocessing queue or a
        # Temporal payload by mistake): build the cipher where it is used instead.
        raise TypeError("ConfigCipher holds encryption keys and cannot be pickled")


def _fernet_for(key: str, index: int, total: int) -> Fernet:
    try:
        return Fernet(key)
    except (ValueError, TypeError):
        # ``from None``: the error is about the key, and its cause is not
        # guaranteed to leave the key's text out of a traceback.
        raise InvalidConfigError(
            f"{KEYS_SETTING}: key #{index + 1} of {total} is malformed "
            "(a Fernet key is 32 url-safe base64-encoded bytes; see ConfigCipher.generate_key())"
        ) from None


def _undecryptable(connection_id: UUID | str | None) -> str:
    subject = f"connection {connection_id}" if connection_id is not None else "a connection"
    return f"{subject}: config cannot be decrypted with the configured keys"
