"""Connection config validation: every bad field named, no value ever echoed."""

from __future__ import annotations

import pytest

from dropzone.connection_config import (
    FilesystemConfig,
    SftpConfig,
    config_to_storable,
    describe,
    parse_connection_config,
    redacted,
)
from dropzone.errors import InvalidConfigError

SECRET = "s3cr3t-VALUE-xyz"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA" + SECRET + "\n-----END OPENSSH PRIVATE KEY-----\n"
FP = "SHA256:" + "Ab1/" * 10 + "xyz"


def sftp(**overrides):
    data = {
        "mode": "sftp",
        "host": "sftp.example.com",
        "username": "orderflow",
        "password": SECRET,
        "host_key": FP,
        "export_path": "/dropzone/exports",
        "ack_path": "/dropzone/acks",
    }
    data.update(overrides)
    return data


def test_sftp_defaults_and_types():
    cfg = parse_connection_config(sftp())
    assert isinstance(cfg, SftpConfig)
    assert (cfg.port, cfg.atomic_write, cfg.poll_interval_seconds, cfg.ack_timeout_seconds) == (22, True, 60, 604800)
    assert (cfg.file_mode, cfg.connect_timeout_seconds, cfg.operation_timeout_seconds) == (0o640, 10, 30)
    assert cfg.password.get_secret_value() == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg) and SECRET not in cfg.model_dump_json()
    assert describe(cfg) == "sftp://orderflow@sftp.example.com:22"


def test_filesystem_config():
    cfg = parse_connection_config({"mode": "filesystem", "export_path": "/var/dropzone/exports/"})
    assert isinstance(cfg, FilesystemConfig)
    assert cfg.export_path == "/var/dropzone/exports" and cfg.ack_path is None
    assert describe(cfg) == "file:///var/dropzone/exports"


def test_design_examples_parse():
    parse_connection_config(
        {"mode": "sftp", "host": "sftp.example.com", "port": 22, "username": "orderflow", "password": "x",
         "ssh_key": KEY, "host_key": FP, "export_path": "/dropzone/exports", "ack_path": "/dropzone/acks",
         "atomic_write": True, "poll_interval_seconds": 60, "ack_timeout_seconds": 604800}
    )
    parse_connection_config(
        {"mode": "filesystem", "export_path": "/var/dropzone/exports", "ack_path": "/var/dropzone/acks", "atomic_write": True}
    )


@pytest.mark.parametrize(
    "pin",
    [
        FP,
        FP + "=",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl comment",
    ],
)
def test_host_key_pins(pin):
    cfg = parse_connection_config(sftp(host_key=pin))
    assert cfg.host_key in (FP, " ".join(pin.split()[:2]))


@pytest.mark.parametrize(
    "pin",
    ["SHA256:short", "MD5:aa:bb", "ssh-ed25519", "ssh-ed25519 !!notbase64!!", "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"],
)
def test_bad_host_key_pins(pin):
    with pytest.raises(InvalidConfigError, match="host_key"):
        parse_connection_config(sftp(host_key=pin))


def test_every_bad_field_is_named_and_no_value_echoed():
    bad = sftp(
        host="bad host " + SECRET,
        port=SECRET,
        username="",
        export_path="relative/" + SECRET,
        ack_path="/a/../" + SECRET,
        ssh_key="not a key " + SECRET,
        host_key=SECRET,
        poll_interval_seconds=0,
        ack_timeout_seconds=-1,
        file_mode="999",
        connect_timeout_seconds=0,
        atomic_write=SECRET,
        surprise=SECRET,
    )
    with pytest.raises(InvalidConfigError) as info:
        parse_connection_config(bad)
    msg = str(info.value)
    assert SECRET not in msg
    for field in ["host", "port", "username", "export_path", "ack_path", "ssh_key", "host_key",
                  "poll_interval_seconds", "ack_timeout_seconds", "file_mode", "connect_timeout_seconds",
                  "atomic_write", "surprise"]:
        assert f"{field}:" in msg, field
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_sftp_needs_a_credential():
    with pytest.raises(InvalidConfigError, match="password or an ssh_key"):
        parse_connection_config(sftp(password=None))
    with pytest.raises(InvalidConfigError, match="password or an ssh_key") as info:
        parse_connection_config(sftp(password="", port=0))  # named even next to other errors
    assert "port:" in str(info.value)
    assert parse_connection_config(sftp(password=None, ssh_key=KEY)).ssh_key is not None


def test_mode_errors():
    with pytest.raises(InvalidConfigError, match="mode: field required"):
        parse_connection_config({"export_path": "/x"})
    with pytest.raises(InvalidConfigError, match="mode: must be one of") as info:
        parse_connection_config({"mode": SECRET, "export_path": "/x"})
    assert SECRET not in str(info.value)
    with pytest.raises(InvalidConfigError):
        parse_connection_config(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="unknown field"):
        parse_connection_config({"mode": "filesystem", "export_path": "/x", "host": "h"})


@pytest.mark.parametrize(("given", "expected"), [("0640", 0o640), ("0o600", 0o600), (420, 0o644), ("644", 0o644)])
def test_file_mode_forms(given, expected):
    assert parse_connection_config(sftp(file_mode=given)).file_mode == expected


def test_storable_round_trip_and_redacted():
    cfg = parse_connection_config(sftp(ssh_key=KEY, ssh_key_passphrase="pp-" + SECRET))
    stored = config_to_storable(cfg)
    assert stored["password"] == SECRET and stored["ssh_key"] == KEY and stored["ssh_key_passphrase"] == "pp-" + SECRET
    assert parse_connection_config(stored) == cfg
    shown = redacted(cfg)
    assert shown["password"] == shown["ssh_key"] == shown["ssh_key_passphrase"] == "***"
    assert SECRET not in repr(shown)
    assert shown["host"] == "sftp.example.com"
    no_key = redacted(parse_connection_config(sftp()))
    assert no_key["ssh_key"] is None and no_key["password"] == "***"
    fs = parse_connection_config({"mode": "filesystem", "export_path": "/x"})
    assert config_to_storable(fs) == redacted(fs) == fs.model_dump()
    assert parse_connection_config(config_to_storable(fs)) == fs


def test_limits():
    for field, value in [("poll_interval_seconds", 86401), ("port", 70000), ("operation_timeout_seconds", 0)]:
        with pytest.raises(InvalidConfigError, match=field):
            parse_connection_config(sftp(**{field: value}))
    assert parse_connection_config(sftp(poll_interval_seconds=86400)).poll_interval_seconds == 86400
