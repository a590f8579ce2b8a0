"""What an SFTP error means: every row of the one table, and no row another one hides."""

from __future__ import annotations

import errno
import socket

import paramiko
import pytest

from dropzone import errors
from dropzone.transports.sftp.errors import (
    EXCEPTION_MAP,
    FX_FAILURE,
    FX_FILE_ALREADY_EXISTS,
    FX_NO_SPACE_ON_FILESYSTEM,
    FX_NO_SUCH_FILE,
    FX_NO_SUCH_PATH,
    FX_NOT_A_DIRECTORY,
    FX_PERMISSION_DENIED,
    FX_WRITE_PROTECT,
    NoCommonAlgorithm,
    SftpStatusError,
    translate,
)

URL = "sftp://u@h:22"

CASES = [
    (paramiko.AuthenticationException("bad"), errors.AuthenticationError, f"{URL}: authentication failed"),
    (paramiko.BadAuthenticationType("no", ["publickey"]), errors.AuthenticationError, f"{URL}: authentication failed"),
    (SftpStatusError(FX_NO_SUCH_FILE, "No such file"), errors.MissingDirectoryError, f"{URL}: cannot do it: No such file"),
    (SftpStatusError(FX_NO_SUCH_PATH, ""), errors.MissingDirectoryError, f"{URL}: cannot do it: status 10"),
    (SftpStatusError(FX_NOT_A_DIRECTORY, "x"), errors.MissingDirectoryError, f"{URL}: cannot do it: x"),
    (SftpStatusError(FX_PERMISSION_DENIED, "denied"), errors.PermissionDeniedError, f"{URL}: cannot do it: denied"),
    (SftpStatusError(FX_WRITE_PROTECT, "ro"), errors.PermissionDeniedError, f"{URL}: cannot do it: ro"),
    (SftpStatusError(FX_FILE_ALREADY_EXISTS, "exists"), errors.DeliveryConflictError, f"{URL}: cannot do it: exists"),
    (SftpStatusError(FX_NO_SPACE_ON_FILESYSTEM, "full"), errors.DropzoneUnavailableError, f"{URL}: cannot do it: full"),
    (SftpStatusError(FX_FAILURE, " Failure "), errors.DropzoneUnavailableError, f"{URL}: cannot do it: Failure"),
    (socket.timeout("t"), errors.DropzoneUnavailableError, f"{URL}: timed out during do it"),
    (TimeoutError(), errors.DropzoneUnavailableError, f"{URL}: timed out during do it"),
    (ConnectionRefusedError(), errors.DropzoneUnavailableError, f"{URL}: connection refused"),
    (socket.gaierror(-2, "Name or service not known"), errors.DropzoneUnavailableError, f"{URL}: cannot resolve host name"),
    (EOFError(), errors.DropzoneUnavailableError, f"{URL}: connection lost during do it"),
    (ConnectionResetError(), errors.DropzoneUnavailableError, f"{URL}: connection lost during do it"),
    (
        NoCommonAlgorithm("cipher", ["aes256-cbc"], ("aes256-gcm@openssh.com",)),
        errors.SshAlgorithmError,
        f"{URL}: the server offers no cipher this connection allows: it offers aes256-cbc; allowed: "
        "aes256-gcm@openssh.com; if the server cannot be upgraded, allow one of them explicitly with the "
        'connection\'s legacy_algorithms (e.g. ["aes256-cbc"])',
    ),
    (
        paramiko.SSHException("Server connection dropped:\nx"),
        errors.DropzoneUnavailableError,
        f"{URL}: SSH error during do it: Server connection dropped: x",
    ),
    (OSError(errno.ENOENT, "gone"), errors.MissingDirectoryError, f"{URL}: cannot do it: no such file or directory"),
    (OSError(errno.EPERM, "no"), errors.PermissionDeniedError, f"{URL}: cannot do it: permission denied"),
    (OSError(errno.EIO, "io"), errors.DropzoneUnavailableError, f"{URL}: do it failed: Input/output error"),
    (OSError("odd"), errors.DropzoneUnavailableError, f"{URL}: do it failed: odd"),
    (ValueError("secret-ish text"), errors.DropzoneUnavailableError, f"{URL}: do it failed: ValueError"),
]


@pytest.mark.parametrize(("exc", "cls", "message"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_translate(exc, cls, message):
    translated = translate(exc, URL, "do it")
    assert type(translated) is cls
    assert translated.message == message


def test_no_row_of_the_table_is_hidden_by_an_earlier_one():
    # First match wins: a row below one for its own base class could never match.
    for i, (later, _) in enumerate(EXCEPTION_MAP):
        for earlier, _ in EXCEPTION_MAP[:i]:
            assert not issubclass(later, earlier), f"{later.__name__} is hidden by {earlier.__name__} above it"


def test_every_row_is_exercised():
    covered = {next((t for t, _ in EXCEPTION_MAP if isinstance(exc, t)), None) for exc, _, _ in CASES}
    assert covered == {t for t, _ in EXCEPTION_MAP} | {None}  # None: the fallback below the table
