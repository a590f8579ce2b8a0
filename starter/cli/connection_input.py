"""Reading a connection's config and secrets for `dropzone connections add/update`.

Secrets never go on the command line (where ``ps`` and shell history would
show them): a password, private key or key passphrase is read from a file
or, for one of them, from standard input (``-``). Like ssh itself, a secret file
that group or others may read is refused, and so is a ``--config-file`` that
holds a secret.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dropzone.connection_config import SECRET_FIELDS, FtpsConfig, SftpConfig
from dropzone.errors import InvalidConfigError
from dropzone.secret_files import require_owner_only
from starter.cli.common import err

STDIN = "-"


def _read_text(path: str, what: str) -> str:
    if path == STDIN:
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidConfigError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_secret_file(path: str, what: str) -> str:
    """A secret from a file that only its owner may read (or from stdin)."""
    if path != STDIN:
        require_owner_only(path, what)
    return _read_text(path, what)


def _strip_line_end(text: str) -> str:
    # `echo pw > file` adds a newline that is not part of the password.
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def load_config_file(config_file: str) -> dict[str, Any]:
    text = _read_text(config_file, "config file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(
            f"config file {config_file} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidConfigError(f"config file {config_file} must hold a JSON object")
    if config_file != STDIN and any(data.get(name) for name in SECRET_FIELDS):
        # A config without secrets (they come from --password-file etc.) may be shared.
        require_owner_only(config_file, "config file")
    return data


def flag_config(mode: str | None, flags: dict[str, Any]) -> dict[str, Any]:
    if mode not in ("filesystem", "sftp"):
        raise InvalidConfigError(
            "give --config-file FILE, or --mode filesystem --export-path DIR, "
            "or --mode sftp --host H --username U --export-path DIR with --password-file/--ssh-key-file"
        )
    data: dict[str, Any] = {"mode": mode}
    data.update({k: v for k, v in flags.items() if v is not None})
    return data


def check_ssh_key(config: Any, source: str | None) -> None:
    """Load the key once now, so a wrong passphrase or format is found at `add`, not at 3 a.m."""
    if not isinstance(config, SftpConfig) or config.ssh_key is None:
        return
    from dropzone.transports.sftp import load_private_key

    passphrase = config.ssh_key_passphrase.get_secret_value() if config.ssh_key_passphrase else None
    try:
        load_private_key(config.ssh_key.get_secret_value(), passphrase)
    except InvalidConfigError as exc:
        where = f" in {source}" if source else ""
        raise InvalidConfigError(f"{exc.message}{where}") from None


def warn_plaintext(config: Any) -> None:
    if isinstance(config, FtpsConfig) and config.allow_insecure_plaintext:
        err.print(f"[yellow]warning:[/] {config.label} is plain FTP (allow_insecure_plaintext): the password and "
                  "every order cross the network unencrypted and the server is not verified", highlight=False)


def one_stdin_reader(
    config_file: str | None, password_file: str | None, ssh_key_file: str | None, passphrase_file: str | None
) -> None:
    stdin_users = [
        name
        for name, value in (
            ("--config-file", config_file),
            ("--password-file", password_file),
            ("--ssh-key-file", ssh_key_file),
            ("--ssh-key-passphrase-file", passphrase_file),
        )
        if value == STDIN
    ]
    if len(stdin_users) > 1:
        raise InvalidConfigError(f"only one of {', '.join(stdin_users)} can read standard input ('-')")


def apply_secret_files(
    raw: dict[str, Any], password_file: str | None, ssh_key_file: str | None, passphrase_file: str | None
) -> None:
    if password_file is not None:
        raw["password"] = _strip_line_end(_read_secret_file(password_file, "password file"))
    if ssh_key_file is not None:
        raw["ssh_key"] = _read_secret_file(ssh_key_file, "ssh key file")
    if passphrase_file is not None:
        raw["ssh_key_passphrase"] = _strip_line_end(_read_secret_file(passphrase_file, "ssh key passphrase file"))


def apply_webhook(raw: dict[str, Any], url: str | None, secret_file: str | None, *stdin_users: str | None) -> None:
    """Status callbacks: ``--webhook-url`` and the ``whsec_…`` secret from ``--webhook-secret-file``."""
    if secret_file == STDIN and STDIN in stdin_users:
        raise InvalidConfigError("only one secret or config option can read standard input ('-')")
    if url is not None:
        raw["webhook_url"] = url
    if secret_file is not None:
        raw["webhook_secret"] = _read_secret_file(secret_file, "webhook secret file").strip()
