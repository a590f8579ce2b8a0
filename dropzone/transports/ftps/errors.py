"""What an FTPS server error means: ONE table (``ERRORS``) and ONE ``translate``.

Every ftplib, ssl and socket exception any FTPS primitive meets goes through
``translate`` and comes out as a ``dropzone.errors`` class, whose ``retryable``
decides what Temporal retries (the shape of encode/httpx's
``HTTPCORE_EXC_MAP`` + ``map_httpcore_exceptions``).

FTP reply codes (RFC 959, 2228, 3659, 4217): 4xx means "try again later",
5xx "this request will not work as it is". Two exceptions to that rule, on
purpose: a full disk or quota (452, 552) is retried, as over SFTP — an operator
frees space and the delivery goes through without anyone re-sending it; and 550
means both "no such file" and "permission denied", so the server's text tells
them apart (every server we know says "denied", "permission" or "not allowed"),
as it does for a missing directory answered with another 5xx (pyftpdlib's MLSD
says "501 No such directory.").

Messages name the connection (its label) and what was being done; they quote
the server's reply text (capped, control characters removed) except for login
replies, which could echo what was sent. Never a credential.
"""

from __future__ import annotations

import ftplib
import re
import socket
import ssl

from dropzone import errors

__all__ = ["ERRORS", "reply_code", "translate"]

_DENIED = re.compile(r"denied|permission|not allowed|forbidden|access", re.IGNORECASE)
_MISSING = re.compile(r"no such|not found|does not exist|doesn't exist|can'?not find|can't find", re.IGNORECASE)
_TLS_REQUIRED = re.compile(r"\b(SSL|TLS)\b|encrypt", re.IGNORECASE)
_REPLY = (ftplib.error_temp, ftplib.error_perm)  # a 4xx / 5xx reply
_Exc = type[BaseException] | tuple[type[BaseException], ...]

# THE table: (exception, reply code or its first digit, text that must also match, error, meaning).
# First match wins: exact codes before classes ("4", "5"), specific exceptions before their bases.
ERRORS: tuple[tuple[_Exc, str | None, re.Pattern[str] | None, type[errors.DropzoneError], str], ...] = (
    (_REPLY, "421", None, errors.DropzoneUnavailableError, "the server is closing the connection"),
    (_REPLY, "425", None, errors.DropzoneUnavailableError, "the server cannot open the data connection"),
    (_REPLY, "426", None, errors.DropzoneUnavailableError, "the transfer was aborted"),
    (_REPLY, "430", None, errors.AuthenticationError, "login refused (user name or password)"),
    (_REPLY, "431", None, errors.DropzoneUnavailableError, "the server has no TLS resources left"),
    (_REPLY, "450", None, errors.DropzoneUnavailableError, "the file is busy"),
    (_REPLY, "451", None, errors.DropzoneUnavailableError, "the server had a local error"),
    (_REPLY, "452", None, errors.DropzoneUnavailableError, "the server is out of storage space"),
    (_REPLY, "500", None, errors.InvalidConfigError, "the server does not know this command"),
    (_REPLY, "502", None, errors.InvalidConfigError, "the server does not implement this command"),
    (_REPLY, "504", None, errors.InvalidConfigError, "the server does not implement this parameter"),
    (_REPLY, "522", None, errors.InvalidConfigError, "the server refused the data channel protection"),
    (_REPLY, "5", _TLS_REQUIRED, errors.InvalidConfigError, "the server requires TLS (allow_insecure_plaintext must go)"),
    (_REPLY, "530", None, errors.AuthenticationError, "login refused"),
    (_REPLY, "532", None, errors.AuthenticationError, "the server wants an account for this"),
    (_REPLY, "533", None, errors.InvalidConfigError, "the server refused the TLS policy"),
    (_REPLY, "534", None, errors.InvalidConfigError, "the server refused TLS for policy reasons"),
    (_REPLY, "550", _DENIED, errors.PermissionDeniedError, "permission denied"),
    (_REPLY, "550", None, errors.MissingDirectoryError, "no such file or directory"),
    (_REPLY, "552", None, errors.DropzoneUnavailableError, "the server's storage allocation is exceeded"),
    (_REPLY, "553", None, errors.PermissionDeniedError, "the file name is not allowed"),
    (_REPLY, "5", _MISSING, errors.MissingDirectoryError, "no such file or directory"),  # pyftpdlib's MLSD: 501
    (_REPLY, "4", None, errors.DropzoneUnavailableError, "the server failed for now"),
    (_REPLY, "5", None, errors.PermissionDeniedError, "the server refused"),
    (ssl.SSLCertVerificationError, None, None, errors.HostKeyError, "server certificate not trusted"),
    (TimeoutError, None, None, errors.DropzoneUnavailableError, "timed out"),  # socket.timeout too
    (ConnectionRefusedError, None, None, errors.DropzoneUnavailableError, "connection refused"),
    (socket.gaierror, None, None, errors.DropzoneUnavailableError, "cannot resolve host name"),
    ((ssl.SSLEOFError, ssl.SSLZeroReturnError), None, None, errors.DropzoneUnavailableError, "connection lost"),
    (ssl.SSLError, None, None, errors.DropzoneUnavailableError, "TLS failed"),
    ((EOFError, ConnectionError), None, None, errors.DropzoneUnavailableError, "connection lost"),
    ((ftplib.error_proto, ftplib.error_reply), None, None, errors.DropzoneUnavailableError, "unexpected reply"),
    (OSError, None, None, errors.DropzoneUnavailableError, "network error"),
)
# Replies whose text is not quoted (a login reply might echo what was sent).
_QUIET_CODES = frozenset({"430", "530", "532"})


def reply_code(exc: BaseException) -> str | None:
    """The three-digit FTP reply code of an ``ftplib.error_temp``/``error_perm``, else None."""
    if isinstance(exc, (ftplib.error_temp, ftplib.error_perm)):
        text = str(exc)
        return text[:3] if text[:3].isdigit() else None
    return None


def _clean(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()[:200]


def translate(exc: BaseException, label: str, action: str) -> errors.DropzoneError:
    """THE translation of an FTPS failure during ``action`` on connection ``label``."""
    if isinstance(exc, errors.DropzoneError):
        return exc
    code = reply_code(exc)
    text = str(exc)[3:].lstrip(" -") if code is not None else ""
    for exc_types, prefix, needs, cls, meaning in ERRORS:
        if not isinstance(exc, exc_types) or (prefix is not None and not (code or "").startswith(prefix)):
            continue
        if needs is not None and not needs.search(text):
            continue
        if code is not None:
            said = "" if code in _QUIET_CODES or not text else f": {_clean(text)}"
            return cls(f"{label}: cannot {action}: {meaning} ({code}{said})")
        detail = _detail(exc)
        return cls(f"{label}: {meaning} during {action}{': ' + detail if detail else ''}")
    return errors.DropzoneUnavailableError(f"{label}: {action} failed: {type(exc).__name__}")


def _detail(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _clean(getattr(exc, "verify_message", None) or "")
    if isinstance(exc, ssl.SSLError):
        return _clean(exc.reason or "")
    if isinstance(exc, (ftplib.error_proto, ftplib.error_reply)):
        return _clean(str(exc))
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, TimeoutError):
        return _clean(exc.strerror)
    return ""
