"""Payload encryption: every payload Temporal stores for us is AES-256-GCM ciphertext.

Modelled on temporalio/samples-python ``encryption/`` and wire-compatible with
its Go and TypeScript twins (same metadata keys, same layout), so a backend in
another language can produce payloads itself (README "Payload encryption"):

    Payload {
      metadata: {"encoding": "binary/encrypted", "encryption-key-id": "<key id>"}
      data:     nonce (12 random bytes) || AES-256-GCM(key, nonce, inner, no AAD) (ciphertext || 16-byte tag)
    }
    inner = the serialised protobuf ``temporal.api.common.v1.Payload`` that the
            pydantic converter produced (``{"encoding": "json/plain"}`` + JSON bytes)

Keys come from ``DROPZONE_PAYLOAD_KEYS`` (``key_id:base64key,key_id2:base64key``):
the first key encrypts, every key decrypts, so rotating is "put the new key
first everywhere, keep the old one until no open run or retained history needs
it". A payload without our encoding (histories recorded before encryption, a
client that sent plain JSON) passes through unchanged.

``build_data_converter`` is the one data converter of the project: worker,
starter, CLI, codec server, tests and benchmarks all use it. Its failure
converter moves failure messages and stack traces into an encoded payload, so
an error that quotes a field is encrypted too.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import secrets
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from dropzone.errors import InvalidConfigError, PayloadKeyError
from dropzone.settings import Settings

KEYS_SETTING = "DROPZONE_PAYLOAD_KEYS"
ENCODING = b"binary/encrypted"
ENCODING_KEY = "encoding"
KEY_ID_KEY = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclasses.dataclass(frozen=True, repr=False)
class PayloadKey:
    """One AES-256 key and its id; never prints the key."""

    key_id: str
    secret: bytes

    def __repr__(self) -> str:
        return f"PayloadKey({self.key_id!r}, ***)"


def generate_key(key_id: str | None = None) -> str:
    """A new ``key_id:base64key`` entry for DROPZONE_PAYLOAD_KEYS."""
    key_id = key_id or f"k{secrets.token_hex(4)}"
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidConfigError(f"key id {key_id!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")
    return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode('ascii')}"


def parse_keys(text: str, *, setting: str = KEYS_SETTING) -> list[PayloadKey]:
    """``key_id:base64key,...`` → keys, first one first. Errors name the entry, never its key."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    if not entries:
        raise InvalidConfigError(f"{setting} holds no key (generate one with 'dropzone payload-keygen')")
    keys: list[PayloadKey] = []
    for number, entry in enumerate(entries, 1):
        where = f"{setting}: key #{number} of {len(entries)}"
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.fullmatch(key_id):
            raise InvalidConfigError(f"{where} is not 'key_id:base64key' (key id: 1-64 of A-Z a-z 0-9 . _ -)")
        try:
            secret = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidConfigError(f"{where} ({key_id}): the key is not valid base64") from None
        if len(secret) != KEY_BYTES:
            raise InvalidConfigError(f"{where} ({key_id}): the key must be {KEY_BYTES} bytes (AES-256), not {len(secret)}")
        if any(k.key_id == key_id for k in keys):
            raise InvalidConfigError(f"{where}: key id {key_id!r} appears twice")
        keys.append(PayloadKey(key_id, secret))
    return keys


def keys_from_settings(settings: Settings) -> list[PayloadKey]:
    if settings.payload_keys is None or not settings.payload_keys.get_secret_value().strip():
        raise InvalidConfigError(
            f"{KEYS_SETTING} is not set: workflow payloads would be stored in plain text "
            "(generate a key with 'dropzone payload-keygen')"
        )
    return parse_keys(settings.payload_keys.get_secret_value())


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get(ENCODING_KEY) == ENCODING


class EncryptionCodec(PayloadCodec):
    """Encrypts with the first key, decrypts with whichever key the payload names."""

    def __init__(self, keys: Sequence[PayloadKey]) -> None:
        super().__init__()
        if not keys:
            raise InvalidConfigError(f"no payload key configured ({KEYS_SETTING})")
        self._encrypt_with = keys[0]
        self._ciphers = {key.key_id: AESGCM(key.secret) for key in keys}

    def __repr__(self) -> str:
        return f"EncryptionCodec(key_ids={self.key_ids!r})"

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._encrypt_with.key_id].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={ENCODING_KEY: ENCODING, KEY_ID_KEY: self._encrypt_with.key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if not is_encrypted(payload):
            return payload  # recorded before encryption, or sent as plain JSON by a client
        key_id = payload.metadata.get(KEY_ID_KEY, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyError(
                f"payload is encrypted with key id {key_id[:64]!r}, which {KEYS_SETTING} does not hold "
                f"(configured: {', '.join(self._ciphers)})"
            )
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadKeyError(f"payload under key id {key_id!r} is too short to be AES-GCM ciphertext")
        try:
            inner = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise PayloadKeyError(
                f"payload under key id {key_id!r} does not decrypt: a different key has that id, "
                "or the payload was altered"
            ) from None
        return Payload.FromString(inner)


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """Pydantic payloads; with a codec, encrypted payloads and encoded failure messages."""
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def build_codec(settings: Settings) -> EncryptionCodec:
    return EncryptionCodec(keys_from_settings(settings))


def build_data_converter(settings: Settings) -> DataConverter:
    """The project's one data converter, from DROPZONE_PAYLOAD_KEYS (refuses to run without keys)."""
    return data_converter(build_codec(settings))
