"""A JSON document's values as raw spans of its buffer (msgspec, in C), not decoded.

This is how a draft of any size is held once: the top-level object is split
into ``msgspec.Raw`` spans pointing into the caller's buffer, the ``lines``
array into one span per item, and only those spans are handed to pydantic, a
batch at a time (dropzone/export_v1/pipeline.py; the ERP simulator's check,
starter/erp_check.py, reads export files the same way).
"""

from __future__ import annotations

import mmap
import re

import msgspec

# Whatever msgspec reads without a copy: bytes, bytearray, memoryview, mmap.
Buffer = bytes | bytearray | memoryview | mmap.mmap

_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_BYTE_OFFSET = re.compile(r"\s*\(byte (\d+)\)$")
_SCAN_CHUNK = 1024 * 1024


def split_document(data: Buffer) -> dict[str, msgspec.Raw]:
    """The top-level values of a JSON object as raw spans of ``data`` (not decoded).

    Raises msgspec's ValidationError (not an object) or DecodeError (not JSON),
    or RecursionError (nested too deep). The spans point into ``data``: a
    memory-mapped file stays open while they live.
    """
    return _TOP_LEVEL.decode(data)


def split_items(raw: msgspec.Raw) -> list[msgspec.Raw] | None:
    """The raw items of a JSON array, or None when ``raw`` is another value."""
    try:
        return _RAW_ITEMS.decode(raw)
    except msgspec.ValidationError:
        return None


def json_error_position(data: Buffer, exc: msgspec.DecodeError) -> str:
    """msgspec's reason (it quotes no input) with the place, as jiter words it:
    ``invalid character at line 3 column 7 (byte 41)``. Truncated input ends at its end."""
    text = str(exc)
    found = _BYTE_OFFSET.search(text)
    with memoryview(data) as view:
        if found is not None:
            offset, text = int(found[1]), text[: found.start()]
        elif "truncated" in text:
            offset = view.nbytes
        else:
            return text
        line, column = 1, offset + 1
        # Counted 1 MiB at a time: the cold path of a draft that may be hundreds of MB.
        for start in range(0, offset, _SCAN_CHUNK):
            piece = bytes(view[start : min(start + _SCAN_CHUNK, offset)])
            newlines = piece.count(b"\n")
            if newlines:
                line += newlines
                column = offset - (start + piece.rfind(b"\n"))
    return f"{text.removeprefix('JSON is malformed: ')} at line {line} column {column} (byte {offset})"
