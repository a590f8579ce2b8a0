"""The `dropzone` command line: how operators start, watch and steer exports.

Every command turns the project's errors into one line on stderr and a
non-zero exit code; no traceback ever reaches a user, and no secret is printed.
"""

from starter.cli import admin, connections, dev, exports  # noqa: F401  (they register commands)
from starter.cli.common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
