"""Helpers for the transport tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from tests.helpers import sha256_of


def body_of(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-enough test bytes."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


sha = sha256_of  # the suite's digest helper (tests/helpers.py), by the short name these tests use
