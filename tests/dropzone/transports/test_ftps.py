"""What only FTPS has, against a real FTP server with explicit TLS (pyftpdlib, tests/fixtures/ftps.py).

The guarantees every dropzone shares (delivery, conflicts, integrity, tmps, acks,
the probe) are checked once for all of them in test_contract.py. Here: the FTP
commands behind them (TLS before the login, no second STOR, one MLSD, the probe's
STOR/RETR/DELE), a server crash mid-upload, a hung server, certificate and password
failures that send nothing, plain FTP only when the config says so, and the error table.
"""

from __future__ import annotations

import ftplib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dropzone import errors, naming
from dropzone.connection_config import FtpsConfig, config_to_storable, parse_connection_config, redacted
from dropzone.connectors import open_dropzone, open_transport
from dropzone.delivery import Dropzone
from dropzone.transports.ftps import FtpsTransport, translate
from dropzone.transports.ftps.transport import _parse_mlst, _stat_result
from tests.fixtures.ftps import FtpsServerInfo
from tests.helpers import sha256_of

MiB = 1024 * 1024
NAME = "sales_order_2a2b3c4d-0000-4000-8000-000000000001_20260101T000000Z_ab12cd34.json"


def open_ftps(raw: dict[str, Any]) -> Dropzone:
    return open_dropzone(parse_connection_config(raw))


def body_of(size: int) -> tuple[bytes, str]:
    body = os.urandom(size)
    return body, sha256_of(body)


def chunks(body: bytes, size: int = MiB) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def token(attempt: int = 1) -> str:
    return naming.execution_token(attempt, os.urandom(4).hex())


def dirs(server: FtpsServerInfo, raw: dict[str, Any]) -> tuple[Path, Path]:
    return server.local_path(raw["export_path"]), server.local_path(raw["ack_path"])


# --- delivery -----------------------------------------------------------------------


def test_delivers_over_tls_started_before_the_login_and_a_protected_data_channel(ftps_server: FtpsServerInfo) -> None:
    raw = ftps_server.config()
    export_dir, _ = dirs(ftps_server, raw)
    body, sha = body_of(100_000)
    with open_ftps(raw) as dz:
        assert isinstance(dz.transport, FtpsTransport)
        dz.deliver(NAME, [body], size=len(body), sha256=sha, token=token())
    assert (export_dir / NAME).read_bytes() == body
    # The server refuses a data transfer without PROT P (tls_data_required), so the bytes
    # arriving at all prove the data channel was protected.
    commands = ftps_server.commands()
    assert commands.index("AUTH") < commands.index("USER") and "PROT" in commands


def test_redelivery_reads_back_instead_of_sending_again(ftps_server: FtpsServerInfo) -> None:
    body, sha = body_of(200_000)
    with open_ftps(ftps_server.config()) as dz:
        dz.deliver(NAME, [body], size=len(body), sha256=sha, token=token())
        before = ftps_server.commands().count("STOR")
        assert dz.deliver(NAME, [body], size=len(body), sha256=sha, token=token()).already_present
    assert ftps_server.commands().count("STOR") == before  # read back and hashed, not sent again


def test_a_server_crash_mid_upload_is_retried_into_one_intact_file(ftps_server: FtpsServerInfo) -> None:
    raw = ftps_server.config()
    export_dir, _ = dirs(ftps_server, raw)
    body, sha = body_of(12 * MiB)
    crashed: list[int] = []

    def crash_once(n: int) -> None:
        if n >= 3 * MiB and not crashed:
            crashed.append(n)
            ftps_server.restart()  # SIGKILL: the connection drops with a partial .tmp on disk

    with open_ftps(raw) as dz, pytest.raises(errors.DropzoneUnavailableError) as caught:
        dz.deliver(NAME, chunks(body), size=len(body), sha256=sha, token=token(1), progress=crash_once)
    assert caught.value.retryable and crashed
    assert [p.name for p in export_dir.iterdir()][0].endswith(".tmp")
    # What Temporal does next: a new attempt, on a new connection, with its own token.
    with open_ftps(raw) as dz:
        result = dz.deliver(NAME, chunks(body), size=len(body), sha256=sha, token=token(2), attempt=2)
    assert not result.already_present
    assert [p.name for p in export_dir.iterdir()] == [NAME]  # the first attempt's .tmp is gone too
    assert sha256_of(export_dir / NAME) == sha


def test_a_hung_server_fails_within_the_operation_timeout(ftps_server: FtpsServerInfo) -> None:
    raw = ftps_server.config(operation_timeout_seconds=1)
    with open_ftps(raw) as dz:
        ftps_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(errors.DropzoneUnavailableError, match="timed out"):
                dz.transport.stat(raw["export_path"])
            # Bounded: the one timeout, not one per later command (the session is marked broken).
            with pytest.raises(errors.DropzoneUnavailableError, match="connection lost"):
                dz.transport.stat(raw["export_path"])
            assert time.monotonic() - started < 30
        finally:
            ftps_server.resume()


# --- acks -------------------------------------------------------------------------------


def test_all_acks_are_listed_with_one_mlsd(ftps_server: FtpsServerInfo) -> None:
    raw = ftps_server.config()
    _, ack_dir = dirs(ftps_server, raw)
    other = NAME.replace("0001", "0002")
    (ack_dir / naming.ack_name(NAME)).write_bytes(b'{"status": "ACKED"}')
    (ack_dir / naming.error_ack_name(other)).write_bytes(b'{"status": "FAILED"}')
    with open_ftps(raw) as dz:
        before = ftps_server.commands().count("MLSD")
        listed = dz.list_all_acks()
        assert ftps_server.commands().count("MLSD") == before + 1  # one listing, no command per file
    assert sorted(a.name for a in listed) == [naming.ack_name(NAME), naming.error_ack_name(other)]


# --- probe, certificates, passwords ---------------------------------------------------


def test_the_probe_stores_retrieves_and_deletes_over_ftp(ftps_server: FtpsServerInfo) -> None:
    before = len(ftps_server.commands())
    with open_ftps(ftps_server.config()) as dz:
        assert dz.probe().ok
    assert {"STOR", "RETR", "DELE"} <= set(ftps_server.commands()[before:])


def test_a_pinned_certificate_alone_is_enough(ftps_server: FtpsServerInfo) -> None:
    raw = ftps_server.config(ca_bundle=None, server_fingerprint=ftps_server.fingerprint)
    with open_transport(parse_connection_config(raw)) as transport:
        assert transport.server_fingerprint() == ftps_server.fingerprint
        assert transport.listdir(raw["export_path"]) == []  # the data channel is checked against the pin too


def test_a_data_connection_with_another_certificate_is_refused(ftps_server: FtpsServerInfo) -> None:
    raw = ftps_server.config(ca_bundle=None, server_fingerprint=ftps_server.fingerprint)
    with open_transport(parse_connection_config(raw)) as transport:
        transport._client.pin = "SHA256:" + "B" * 43  # as if another server answered the data connection
        with pytest.raises(errors.HostKeyError, match="certificate on the data channel"):
            transport.listdir(raw["export_path"])
        with pytest.raises(errors.DropzoneUnavailableError, match="connection lost"):  # never trusted again
            transport.stat(raw["export_path"])


@pytest.mark.parametrize("wrong", ["untrusted CA", "other pin", "system CAs"])
def test_a_wrong_certificate_is_refused_before_anything_is_sent(ftps_server: FtpsServerInfo, wrong: str) -> None:
    overrides: dict[str, Any] = {
        "untrusted CA": {"ca_bundle": str(ftps_server.untrusted_ca_path)},
        "other pin": {"ca_bundle": None, "server_fingerprint": "SHA256:" + "A" * 43},
        "system CAs": {"ca_bundle": None},  # a private CA is not among the system's
    }[wrong]
    raw = ftps_server.config(**overrides)
    before = len(ftps_server.commands())
    with pytest.raises(errors.HostKeyError) as caught:
        open_ftps(raw)
    message = caught.value.message
    assert not caught.value.retryable and caught.value.code == "HOST_KEY_MISMATCH"
    assert message.startswith(f"ftps://{ftps_server.username}@127.0.0.1:{ftps_server.port}: ")
    assert "nothing was sent" in message and ftps_server.fingerprint in message  # what to confirm and pin
    assert set(ftps_server.commands()[before:]) == {"AUTH"}  # no USER, no PASS, no STOR
    assert ftps_server.password not in message


def test_a_wrong_password_fails_permanently_without_quoting_it(ftps_server: FtpsServerInfo) -> None:
    raw = ftps_server.config(password="not-the-Passw0rd")
    with pytest.raises(errors.AuthenticationError) as caught:
        open_ftps(raw)
    assert caught.value.code == "AUTH_FAILED" and not caught.value.retryable
    assert caught.value.message == f"ftps://{ftps_server.username}@127.0.0.1:{ftps_server.port}: cannot log in: login refused (530)"


# --- plain FTP ------------------------------------------------------------------------------


def test_plain_ftp_is_refused_without_the_flag(ftps_server: FtpsServerInfo, plain_ftp_server: FtpsServerInfo) -> None:
    raw = plain_ftp_server.config(allow_insecure_plaintext=None, ca_bundle=str(ftps_server.ca_path))
    before = len(plain_ftp_server.commands())
    with pytest.raises(errors.InvalidConfigError, match="allow_insecure_plaintext: true") as caught:
        open_ftps(raw)
    assert "cannot start TLS (AUTH TLS)" in caught.value.message
    assert plain_ftp_server.commands()[before:] == ["AUTH"]  # the password never left


def test_plain_ftp_with_the_flag_delivers(plain_ftp_server: FtpsServerInfo) -> None:
    raw = plain_ftp_server.config()
    export_dir, _ = dirs(plain_ftp_server, raw)
    body, sha = body_of(100_000)
    config = parse_connection_config(raw)
    assert config.label.startswith("ftp://")  # the label says it is not FTPS
    before = len(plain_ftp_server.commands())
    with open_dropzone(config) as dz:
        assert dz.transport.server_fingerprint() is None
        dz.deliver(NAME, [body], size=len(body), sha256=sha, token=token())
    assert (export_dir / NAME).read_bytes() == body
    assert "AUTH" not in plain_ftp_server.commands()[before:] and "STOR" in plain_ftp_server.commands()[before:]


def test_the_flag_does_not_go_with_certificate_settings() -> None:
    raw = {"mode": "ftps", "host": "h", "username": "u", "password": "p", "export_path": "/e",
           "allow_insecure_plaintext": True, "ca_bundle": "/etc/ssl/ca.pem"}
    with pytest.raises(errors.InvalidConfigError, match="allow_insecure_plaintext"):
        parse_connection_config(raw)


# --- the config and the error table ----------------------------------------------------------


def test_config_label_secrets_and_pins() -> None:
    raw = {"mode": "ftps", "host": "erp.example.com", "username": "acme", "password": "s3cret", "export_path": "/in",
           "server_fingerprint": "SHA256:" + ":".join(["AB"] * 32)}
    config = parse_connection_config(raw)
    assert isinstance(config, FtpsConfig) and config.label == "ftps://acme@erp.example.com:21"
    assert config.server_fingerprint == "SHA256:" + "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"  # hex → base64
    assert redacted(config)["password"] == "***" and config_to_storable(config)["password"] == "s3cret"
    assert "s3cret" not in repr(config) + config.model_dump_json()
    with pytest.raises(errors.InvalidConfigError) as caught:
        parse_connection_config({**raw, "server_fingerprint": "SHA1:00", "ca_bundle": "relative.pem", "password": ""})
    assert "server_fingerprint: must be" in caught.value.message and "ca_bundle: must be" in caught.value.message
    assert "s3cret" not in caught.value.message


@pytest.mark.parametrize(("exc", "cls"), [
    (ftplib.error_perm("550 No such file or directory."), errors.MissingDirectoryError),
    (ftplib.error_perm("550 Permission denied."), errors.PermissionDeniedError),
    (ftplib.error_perm("553 Can't open that file: Permission denied"), errors.PermissionDeniedError),
    (ftplib.error_temp("452 Insufficient storage space."), errors.DropzoneUnavailableError),
    (ftplib.error_perm("552 Quota exceeded."), errors.DropzoneUnavailableError),
    (ftplib.error_temp("421 Too many connections."), errors.DropzoneUnavailableError),
    (ftplib.error_perm("530 Login incorrect for s3cret."), errors.AuthenticationError),
    (ftplib.error_perm("534 Policy requires SSL."), errors.InvalidConfigError),
    (ftplib.error_perm("502 MLST not implemented."), errors.InvalidConfigError),
    (socket.timeout("timed out"), errors.DropzoneUnavailableError),
    (ConnectionResetError(104, "Connection reset by peer"), errors.DropzoneUnavailableError),
    (EOFError(), errors.DropzoneUnavailableError),
    (ssl.SSLCertVerificationError("certificate verify failed"), errors.HostKeyError),
])
def test_one_table_says_what_a_server_error_means(exc: BaseException, cls: type[errors.DropzoneError]) -> None:
    translated = translate(exc, "ftps://u@h:21", "upload /x (STOR)")
    assert type(translated) is cls
    assert translated.message.startswith("ftps://u@h:21: ") and "s3cret" not in translated.message


def test_links_reported_by_the_server_are_links() -> None:
    reply = "250-Listing /a\n type=OS.unix=slink:/etc/passwd;size=11;modify=20260101120000; /a\n250 End"
    st = _stat_result(_parse_mlst(reply))
    assert st.is_link and not st.is_file and st.mtime == 1767268800.0
