import pickle
import uuid

import pytest
from cryptography.fernet import Fernet

from dropzone.crypto import ConfigCipher
from dropzone.errors import ConfigKeyError, InvalidConfigError

SFTP_CONFIG = {
    "mode": "sftp",
    "host": "sftp.example.com",
    "port": 22,
    "username": "orderflow",
    "password": "hunter2-very-secret",
    "export_path": "/dropzone/exports",
    "atomic_write": True,
}


def test_round_trip_hides_the_plaintext():
    cipher = ConfigCipher([ConfigCipher.generate_key()])

    token = cipher.encrypt(SFTP_CONFIG)

    assert "hunter2" not in token
    assert cipher.decrypt(token, connection_id=uuid.uuid4()) == SFTP_CONFIG


def test_first_key_encrypts_and_every_key_decrypts():
    old, new = ConfigCipher.generate_key(), ConfigCipher.generate_key()
    old_token = ConfigCipher([old]).encrypt(SFTP_CONFIG)
    both = ConfigCipher([new, old])

    assert both.decrypt(old_token, connection_id="c1") == SFTP_CONFIG
    new_token = both.encrypt(SFTP_CONFIG)
    assert ConfigCipher([new]).decrypt(new_token, connection_id="c1") == SFTP_CONFIG
    with pytest.raises(ConfigKeyError):
        ConfigCipher([old]).decrypt(new_token, connection_id="c1")


def test_rotate_moves_a_token_to_the_first_key():
    old, new = ConfigCipher.generate_key(), ConfigCipher.generate_key()
    old_token = ConfigCipher([old]).encrypt(SFTP_CONFIG)

    rotated = ConfigCipher([new, old]).rotate(old_token)

    assert ConfigCipher([new]).decrypt(rotated, connection_id="c1") == SFTP_CONFIG


def test_undecryptable_token_names_the_connection_not_the_key():
    removed_key = ConfigCipher.generate_key()
    current_key = ConfigCipher.generate_key()
    token = ConfigCipher([removed_key]).encrypt(SFTP_CONFIG)
    connection_id = uuid.uuid4()

    with pytest.raises(ConfigKeyError) as caught:
        ConfigCipher([current_key]).decrypt(token, connection_id=connection_id)

    message = str(caught.value)
    assert message == f"connection {connection_id}: config cannot be decrypted with the configured keys"
    assert caught.value.code == "CONFIG_KEY_UNAVAILABLE"
    assert not caught.value.retryable
    assert removed_key not in message and current_key not in message


def test_rotate_of_an_undecryptable_token_names_the_connection():
    token = ConfigCipher([ConfigCipher.generate_key()]).encrypt(SFTP_CONFIG)
    with pytest.raises(ConfigKeyError, match="connection c7: "):
        ConfigCipher([ConfigCipher.generate_key()]).rotate(token, connection_id="c7")


def test_garbage_token_is_a_key_error():
    with pytest.raises(ConfigKeyError):
        ConfigCipher([ConfigCipher.generate_key()]).decrypt("not-a-fernet-token", connection_id="c1")


@pytest.mark.parametrize("keys", [[], [""], ["  ", ""]])
def test_no_key_is_a_config_error(keys):
    with pytest.raises(InvalidConfigError) as caught:
        ConfigCipher(keys)
    assert str(caught.value) == "no config encryption key configured (DROPZONE_CONFIG_KEYS)"


def test_malformed_key_names_its_position_but_not_its_text():
    good = ConfigCipher.generate_key()
    bad = "this-is-not-a-fernet-key"

    with pytest.raises(InvalidConfigError) as caught:
        ConfigCipher([good, bad])

    message = str(caught.value)
    assert "#2 of 2" in message
    assert bad not in message and good not in message
    assert caught.value.__cause__ is None


def test_a_single_string_is_one_key():
    key = ConfigCipher.generate_key()
    assert ConfigCipher(key).key_count == 1
    assert ConfigCipher([f"  {key}\n"]).key_count == 1


def test_repr_and_pickle_never_reveal_keys():
    key = ConfigCipher.generate_key()
    cipher = ConfigCipher([key, ConfigCipher.generate_key()])

    assert key not in repr(cipher) and key not in str(cipher)
    assert "2 key" in repr(cipher)
    with pytest.raises(TypeError):
        pickle.dumps(cipher)


def test_generated_keys_are_fernet_keys():
    key = ConfigCipher.generate_key()
    assert isinstance(key, str)
    Fernet(key)  # does not raise
    assert key != ConfigCipher.generate_key()


def test_config_must_be_a_json_object():
    cipher = ConfigCipher([ConfigCipher.generate_key()])
    with pytest.raises(InvalidConfigError):
        cipher.encrypt(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="not JSON-serialisable"):
        cipher.encrypt({"when": object()})
