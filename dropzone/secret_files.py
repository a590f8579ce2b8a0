"""Files that hold secrets must be readable by their owner only, as ssh insists for keys.

Used for the CLI's ``--password-file``/``--ssh-key-file``/``--config-file``
and for the env file the settings read (``DROPZONE_ENV_FILE``).
"""

from __future__ import annotations

import os
import stat

from dropzone.errors import InvalidConfigError


def require_owner_only(path: str | os.PathLike[str], what: str) -> None:
    """Refuse ``path`` unless it is a regular file that group and others cannot access."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InvalidConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InvalidConfigError(f"{what} {path} is not a regular file")
    if mode & 0o077:
        raise InvalidConfigError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"it holds a secret: run 'chmod 600 {path}' and try again"
        )
