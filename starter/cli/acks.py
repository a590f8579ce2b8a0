"""`dropzone acks …`: ack files that were rejected (malformed, unknown export, contradictory)."""

from __future__ import annotations
