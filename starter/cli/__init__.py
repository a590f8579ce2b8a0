"""The `dropzone` command line: how operators start, watch and steer exports.

Every command turns the project's errors into one line on stderr and a
non-zero exit code; no traceback ever reaches a user, and no secret is printed.
"""

import os
import sys

from starter.cli import acks, admin, api, codec, connections, dev, erp_sim, exports, tokens  # noqa: F401  (they register commands)
from starter.cli.common import app


def main() -> None:
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    # Temporal's Rust core keeps threads that can abort CPython's finalisation
    # ("PyGILState_Release ... must be current", temporalio/sdk-python#300), which
    # would turn a successful command into a crash: leave without finalising.
    os._exit(code)


__all__ = ["app", "main"]
