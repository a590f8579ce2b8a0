"""How SFTP connects, against OpenSSH sshd and asyncssh: authentication, host-key pins, servers down."""

from __future__ import annotations

import time
import uuid

import pytest

from dropzone import errors
from dropzone.connection_config import parse_connection_config
from dropzone.delivery import Dropzone
from dropzone.transports.sftp import SftpTransport, fetch_host_key, host_key_fingerprint
from tests.dropzone.transports._sftp import connect, deliver, listing
from tests.helpers import free_port

# ----- authentication and host keys -----


def test_password_auth_and_probe(sftp_server):
    with connect(sftp_server) as dz:
        assert isinstance(dz, Dropzone)
        result = dz.probe()
        assert result.ok, result.detail
        assert result.host_key_fingerprint == sftp_server.host_key_fingerprint
        assert dz.transport.server_fingerprint() == sftp_server.host_key_fingerprint
        assert listing(sftp_server, dz.export_path) == []  # probe file removed


@pytest.mark.parametrize("key", ["ed25519", "rsa"])
def test_key_auth(sftp_server, key):
    text = sftp_server.keys.ed25519 if key == "ed25519" else sftp_server.keys.rsa
    with connect(sftp_server, password=None, ssh_key=text) as dz:
        assert deliver(dz, b"{}").already_present is False


def test_encrypted_key_needs_passphrase(sftp_server):
    keys = sftp_server.keys
    with connect(sftp_server, password=None, ssh_key=keys.ed25519_encrypted, ssh_key_passphrase=keys.passphrase) as dz:
        assert dz.probe().ok
    with pytest.raises(errors.InvalidConfigError, match="passphrase"):
        connect(sftp_server, password=None, ssh_key=keys.ed25519_encrypted)
    with pytest.raises(errors.InvalidConfigError) as info:
        connect(sftp_server, password=None, ssh_key=keys.ed25519_encrypted, ssh_key_passphrase="wrong-secret-pp")
    assert "wrong-secret-pp" not in str(info.value)


def test_wrong_password_fails_fast_without_leaking_it(sftp_server):
    started = time.monotonic()
    with pytest.raises(errors.AuthenticationError) as info:
        connect(sftp_server, password="wrong-secret-pw")
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert info.value.code == "AUTH_FAILED"
    assert str(info.value) == f"sftp://{sftp_server.username}@{sftp_server.host}:{sftp_server.port}: authentication failed"
    assert "wrong-secret-pw" not in repr(info.value) + repr(info.value.__cause__)
    assert info.value.retryable is False


def test_auth_attempts_are_observable(sftp_server):
    # Control for the "no auth attempted" assertions below: an attempt IS counted.
    user = "control" + uuid.uuid4().hex[:8]
    with pytest.raises(errors.AuthenticationError):
        connect(sftp_server, username=user)
    assert sftp_server.auth_attempts(user) >= 1


def test_key_not_authorized(sftp_server):
    with pytest.raises(errors.AuthenticationError):
        connect(sftp_server, password=None, ssh_key=sftp_server.keys.unauthorized_ed25519)


def test_unknown_host_key_is_refused_before_auth(sftp_server):
    user = "unknownkey" + uuid.uuid4().hex[:8]
    with pytest.raises(errors.HostKeyError) as info:
        connect(sftp_server, host_key=None, username=user)
    assert info.value.code == "HOST_KEY_UNKNOWN"
    assert sftp_server.host_key_fingerprint in str(info.value)  # what the operator must verify
    assert sftp_server.auth_attempts(user) == 0


@pytest.mark.parametrize("pin", ["fingerprint", "key_line"])
def test_wrong_pinned_host_key_is_a_mismatch_before_auth(sftp_server, pin):
    other = sftp_server.keys.ed25519_pub  # a valid ed25519 key, but not the server's
    import base64
    import hashlib

    blob = base64.b64decode(other.split()[1])
    wrong = (
        "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        if pin == "fingerprint"
        else " ".join(other.split()[:2])
    )
    user = "mismatch" + uuid.uuid4().hex[:8]
    with pytest.raises(errors.HostKeyError) as info:
        connect(sftp_server, host_key=wrong, username=user)
    assert info.value.code == "HOST_KEY_MISMATCH"
    assert sftp_server.host_key_fingerprint in str(info.value)
    assert sftp_server.auth_attempts(user) == 0


def test_pin_rsa_key_line_or_fingerprint(sftp_server):
    # The server also has an RSA key; pinning it (as a line or as a bare fingerprint) works.
    with connect(sftp_server, host_key=sftp_server.host_key_lines["ssh-rsa"]) as dz:
        assert dz.transport.server_fingerprint() == sftp_server.host_key_fingerprints["ssh-rsa"]
    with connect(sftp_server, host_key=sftp_server.host_key_fingerprints["ssh-rsa"]) as dz:
        assert dz.transport.server_fingerprint() == sftp_server.host_key_fingerprints["ssh-rsa"]


def test_fetch_host_key(sftp_server):
    key_type, fingerprint, line = fetch_host_key(sftp_server.host, sftp_server.port, timeout=5)
    assert key_type == "ssh-ed25519"
    assert fingerprint == sftp_server.host_key_fingerprint
    assert line == sftp_server.host_key_line
    # The printed line is itself a valid pin.
    with connect(sftp_server, host_key=line) as dz:
        assert dz.transport.server_fingerprint() == fingerprint


def test_host_key_fingerprint_matches_ssh_keygen(ssh_client_keys):
    import subprocess

    from dropzone.transports.sftp import load_private_key, public_key_line

    for path, text in [(ssh_client_keys.ed25519_path, ssh_client_keys.ed25519), (ssh_client_keys.rsa_path, ssh_client_keys.rsa)]:
        pkey = load_private_key(text)
        out = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], capture_output=True, text=True, check=True).stdout
        assert host_key_fingerprint(pkey) == out.split()[1]
        assert public_key_line(pkey) == " ".join(path.with_suffix(".pub").read_text().split()[:2])


# ----- server down -----


def test_server_down_is_transient_within_connect_timeout(sftp_server):
    sftp_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(errors.DropzoneUnavailableError) as info:
            connect(sftp_server, connect_timeout_seconds=2)
        assert time.monotonic() - started < 2.5
        assert info.value.retryable
    finally:
        sftp_server.start()


def test_unroutable_connect_times_out():
    # Nothing listens there; a blackholed address would hang without the connect timeout.
    cfg = parse_connection_config(
        {
            "mode": "sftp",
            "host": "127.0.0.1",
            "port": free_port(),
            "username": "u",
            "password": "p",
            "host_key": "SHA256:" + "A" * 43,
            "export_path": "/x",
            "connect_timeout_seconds": 1,
        }
    )
    with pytest.raises(errors.DropzoneUnavailableError, match="connection refused"):
        SftpTransport.connect(cfg)


def test_silent_server_times_out_within_connect_timeout():
    # Accepts TCP but never sends an SSH banner: only the banner/handshake timeouts end it.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        cfg = parse_connection_config(
            {
                "mode": "sftp",
                "host": "127.0.0.1",
                "port": listener.getsockname()[1],
                "username": "u",
                "password": "p",
                "host_key": "SHA256:" + "A" * 43,
                "export_path": "/x",
                "connect_timeout_seconds": 1,
            }
        )
        started = time.monotonic()
        with pytest.raises(errors.DropzoneUnavailableError):
            SftpTransport.connect(cfg)
        assert time.monotonic() - started < 3


def test_usernames_with_at_sign_are_accepted_by_config(sftp_server):
    cfg = parse_connection_config(sftp_server.config(username="orders@erp.example.com"))
    with pytest.raises(errors.AuthenticationError, match="sftp://orders@erp.example.com@"):
        SftpTransport.connect(cfg)
