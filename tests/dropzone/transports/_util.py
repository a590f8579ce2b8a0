"""Helpers for the transport tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator


def body_of(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-enough test bytes."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
