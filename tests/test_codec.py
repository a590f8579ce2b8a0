"""The payload codec and the one data converter, without servers: format, rotation, errors."""

from __future__ import annotations

import asyncio
import base64

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from dropzone.errors import InvalidConfigError, PayloadKeyError
from dropzone.settings import Settings
from starter.codec import (
    ENCODING,
    KEY_ID_KEY,
    EncryptionCodec,
    build_data_converter,
    generate_key,
    parse_keys,
)

K1, K2 = generate_key("k1"), generate_key("k2")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_format_is_the_documented_one():
    """nonce(12) || AES-256-GCM(key, nonce, serialized inner Payload, no AAD); key id in metadata."""
    [key] = parse_keys(K1)
    inner = Payload(metadata={"encoding": b"json/plain"}, data=b'{"customer": "Muster GmbH"}')
    sealed = EncryptionCodec([key]).encrypt(inner)
    assert dict(sealed.metadata) == {"encoding": ENCODING, KEY_ID_KEY: b"k1"}
    assert b"Muster" not in sealed.data and len(sealed.data) == 12 + len(inner.SerializeToString()) + 16
    opened = AESGCM(base64.b64decode(K1.split(":")[1])).decrypt(sealed.data[:12], sealed.data[12:], None)
    assert Payload.FromString(opened) == inner
    again = EncryptionCodec([key]).encrypt(inner)
    assert again.data[:12] != sealed.data[:12]  # a fresh nonce every time


def test_the_first_key_encrypts_and_every_key_decrypts():
    written_under_k1 = run(EncryptionCodec(parse_keys(K1)).encode([Payload(data=b"1")]))
    rotated = EncryptionCodec(parse_keys(f"{K2},{K1}"))
    assert run(rotated.decode(written_under_k1)) == [Payload(data=b"1")]
    [new] = run(rotated.encode([Payload(data=b"2")]))
    assert new.metadata[KEY_ID_KEY] == b"k2"
    with pytest.raises(PayloadKeyError, match=r"key id 'k1', which DROPZONE_PAYLOAD_KEYS does not hold \(configured: k2\)"):
        run(EncryptionCodec(parse_keys(K2)).decode(written_under_k1))


def test_a_key_with_the_right_id_but_other_bytes_is_refused_clearly():
    sealed = EncryptionCodec(parse_keys(K1)).encrypt(Payload(data=b"x"))
    impostor = EncryptionCodec(parse_keys(generate_key("k1")))
    with pytest.raises(PayloadKeyError, match="does not decrypt"):
        impostor.decrypt(sealed)


def test_plain_payloads_pass_through():
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"recorded before encryption"')
    assert run(EncryptionCodec(parse_keys(K1)).decode([plain])) == [plain]


def test_keys_never_print():
    codec = EncryptionCodec(parse_keys(f"{K1},{K2}"))
    secret = K1.split(":")[1]
    assert secret not in repr(codec) + repr(parse_keys(K1)) + repr(settings(payload_keys=K1))
    assert repr(codec) == "EncryptionCodec(key_ids=['k1', 'k2'])"


def test_the_data_converter_needs_keys_and_encodes_failures():
    with pytest.raises(InvalidConfigError, match="DROPZONE_PAYLOAD_KEYS is not set"):
        build_data_converter(settings())
    converter = build_data_converter(settings(payload_keys=K1))
    failure = Failure()
    error = ApplicationError("customer Muster GmbH unknown", {"fields": ["customer.name"]}, type="INVALID_DRAFT")
    run(converter.encode_failure(error, failure))
    raw = failure.SerializeToString()
    assert b"Muster" not in raw and b"customer.name" not in raw
    assert failure.message == "Encoded failure" and failure.application_failure_info.type == "INVALID_DRAFT"
    decoded = run(converter.decode_failure(failure))
    assert isinstance(decoded, ApplicationError) and decoded.message == "customer Muster GmbH unknown"


@pytest.mark.parametrize("bad", ["", "k1", "bad id!:" + K1.split(":")[1], f"{K1},{K1}"])
def test_bad_key_settings_are_refused(bad: str):
    with pytest.raises(InvalidConfigError, match="DROPZONE_PAYLOAD_KEYS"):
        parse_keys(bad)
