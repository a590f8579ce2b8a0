"""What an SFTP error means: ONE table from library exceptions to ``dropzone.errors``, ONE ``translate``.

Modelled on encode/httpx's ``_transports/default.py`` (``HTTPCORE_EXC_MAP`` and
``map_httpcore_exceptions``): the adapter keeps no other ``isinstance`` chain.
The table is read top to bottom and the first row whose exception type matches
wins, so a subclass sits above its base (``ConnectionRefusedError`` above
``ConnectionError``, ``SftpStatusError`` and ``socket.gaierror`` above
``OSError``, ``paramiko.AuthenticationException`` above ``SSHException``).

SFTP status replies are told apart by their code (``STATUS_MAP``); OpenSSH
reports ENOSPC, EDQUOT and other failures without an SFTP v3 code as plain
``FAILURE``, so every code not listed is a retried ``DropzoneUnavailableError``
carrying the server's text for the operator.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from dropzone import errors, ssh_algorithms

__all__ = ["NOT_FOUND", "NoCommonAlgorithm", "SftpStatusError", "translate"]

# SFTP v3 status codes, plus the v5/v6 ones some servers send regardless.
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE = 0, 1, 2, 3, 4
FX_BAD_MESSAGE, FX_NO_CONNECTION, FX_CONNECTION_LOST, FX_OP_UNSUPPORTED = 5, 6, 7, 8
FX_NO_SUCH_PATH, FX_FILE_ALREADY_EXISTS, FX_WRITE_PROTECT = 10, 11, 12
FX_NO_SPACE_ON_FILESYSTEM, FX_QUOTA_EXCEEDED, FX_NOT_A_DIRECTORY = 14, 15, 19

# "Nothing there": a stat, read or remove of such a path is an answer, not an error.
NOT_FOUND = frozenset({FX_NO_SUCH_FILE, FX_NO_SUCH_PATH})


class SftpStatusError(IOError):
    """An SFTP status reply; ``errno`` kept compatible with paramiko's mapping."""

    def __init__(self, code: int, text: str) -> None:
        eno = {FX_NO_SUCH_FILE: errno.ENOENT, FX_PERMISSION_DENIED: errno.EACCES}.get(code)
        if eno is not None:
            super().__init__(eno, text)
        else:
            super().__init__(text)
        self.sftp_code = code
        self.text = text


class NoCommonAlgorithm(IncompatiblePeer):
    """Key exchange found no algorithm of one kind that both sides allow."""

    def __init__(self, what: str, offered: list[str], allowed: tuple[str, ...]) -> None:
        super().__init__(f"no common {what}")
        self.what = what
        self.offered = [safe_name(n) for n in offered[:20] if n]
        self.allowed = allowed


def safe_name(name: str) -> str:
    # The server's words: printable ASCII only, bounded.
    return "".join(c for c in name if c.isascii() and c.isprintable())[:64] or "?"


def safe_text(exc: BaseException) -> str:
    # paramiko exception texts carry protocol words, never our credentials; cap them anyway.
    return str(exc).replace("\n", " ")[:200]


# ----- the table -----

Builder = Callable[[BaseException, str, str], errors.DropzoneError]

STATUS_MAP: dict[int, type[errors.DropzoneError]] = {
    FX_NO_SUCH_FILE: errors.MissingDirectoryError,
    FX_NO_SUCH_PATH: errors.MissingDirectoryError,
    FX_NOT_A_DIRECTORY: errors.MissingDirectoryError,
    FX_PERMISSION_DENIED: errors.PermissionDeniedError,
    FX_WRITE_PROTECT: errors.PermissionDeniedError,
    FX_FILE_ALREADY_EXISTS: errors.DeliveryConflictError,
}
ERRNO_MAP: dict[int, tuple[type[errors.DropzoneError], str]] = {
    errno.ENOENT: (errors.MissingDirectoryError, "no such file or directory"),
    errno.ENOTDIR: (errors.MissingDirectoryError, "no such file or directory"),
    errno.EACCES: (errors.PermissionDeniedError, "permission denied"),
    errno.EPERM: (errors.PermissionDeniedError, "permission denied"),
}


def _status(exc: BaseException, url: str, action: str) -> errors.DropzoneError:
    assert isinstance(exc, SftpStatusError)
    code, text = exc.sftp_code, (exc.text or "").strip()
    cls = STATUS_MAP.get(code, errors.DropzoneUnavailableError)
    return cls(f"{url}: cannot {action}: {text or 'status ' + str(code)}")


def _os_error(exc: BaseException, url: str, action: str) -> errors.DropzoneError:
    assert isinstance(exc, OSError)
    code = exc.errno
    if code in ERRNO_MAP:
        cls, what = ERRNO_MAP[code]
        return cls(f"{url}: cannot {action}: {what}")
    reason = os.strerror(code) if code else (safe_text(exc) or type(exc).__name__)
    return errors.DropzoneUnavailableError(f"{url}: {action} failed: {reason}")


def _mismatch(exc: BaseException, url: str, action: str) -> errors.DropzoneError:
    assert isinstance(exc, NoCommonAlgorithm)
    legacy = [n for n in exc.offered if n in ssh_algorithms.LEGACY]
    removed = [n for n in exc.offered if n in ssh_algorithms.UNAVAILABLE]
    if legacy:
        hint = (
            f"; if the server cannot be upgraded, allow one of them explicitly with the connection's "
            f'legacy_algorithms (e.g. ["{legacy[0]}"])'
        )
    elif removed:
        hint = f"; {removed[0]} cannot be enabled: {ssh_algorithms.UNAVAILABLE[removed[0]]}"
    else:
        hint = ""
    return errors.SshAlgorithmError(
        f"{url}: the server offers no {exc.what} this connection allows: it offers "
        f"{', '.join(exc.offered) or 'none'}; allowed: {', '.join(exc.allowed) or 'none'}{hint}"
    )


def _fixed(cls: type[errors.DropzoneError], template: str) -> Builder:
    return lambda exc, url, action: cls(template.format(url=url, action=action, text=safe_text(exc)))


# First match wins: a subclass above its base.
EXCEPTION_MAP: tuple[tuple[type[BaseException], Builder], ...] = (
    (paramiko.AuthenticationException, _fixed(errors.AuthenticationError, "{url}: authentication failed")),
    (SftpStatusError, _status),
    (TimeoutError, _fixed(errors.DropzoneUnavailableError, "{url}: timed out during {action}")),  # = socket.timeout
    (ConnectionRefusedError, _fixed(errors.DropzoneUnavailableError, "{url}: connection refused")),
    (socket.gaierror, _fixed(errors.DropzoneUnavailableError, "{url}: cannot resolve host name")),
    (EOFError, _fixed(errors.DropzoneUnavailableError, "{url}: connection lost during {action}")),
    (ConnectionError, _fixed(errors.DropzoneUnavailableError, "{url}: connection lost during {action}")),
    (NoCommonAlgorithm, _mismatch),
    # Negotiation failures, "Server connection dropped", channel closed …
    (paramiko.SSHException, _fixed(errors.DropzoneUnavailableError, "{url}: SSH error during {action}: {text}")),
    (OSError, _os_error),
)


def translate(exc: Exception, url: str, action: str) -> errors.DropzoneError:
    """THE translation of a paramiko / socket / OS exception met while ``action`` on ``url``.

    Callers raise the result ``from exc`` and pass project errors through untouched.
    """
    for exc_type, build in EXCEPTION_MAP:
        if isinstance(exc, exc_type):
            return build(exc, url, action)
    return errors.DropzoneUnavailableError(f"{url}: {action} failed: {type(exc).__name__}")
