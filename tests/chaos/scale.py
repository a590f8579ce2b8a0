"""How big the chaos suite runs.

CI runs the reduced sizes on every change (README test command); the full
suite (≥ 50 exports killed at every side effect, 200 exports on two
workers) runs with ``DROPZONE_CHAOS_FULL=1 pytest -m chaos``.
"""

from __future__ import annotations

import os

FULL = os.environ.get("DROPZONE_CHAOS_FULL", "") == "1"


def size(*, full: int, reduced: int) -> int:
    return full if FULL else reduced
