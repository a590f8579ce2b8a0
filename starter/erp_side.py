"""The ERP's side of a dropzone: list complete exports, read one, write an answer.

What an ERP (or ``dropzone erp-sim``, or tooling that plays the ERP against a
staging dropzone) does with a dropzone, built only on a transport's public
primitives (``dropzone.transports.base.Transport``) — the export pipeline
never uses it. Opened through the one factory, ``connectors.open_transport``,
as a private connection: the ERP is a separate client of the server, not one
of the worker's pooled sessions.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from types import TracebackType

from dropzone import errors, naming
from dropzone.connection_config import FilesystemConfig, SftpConfig
from dropzone.connectors import open_transport
from dropzone.transports.base import Transport, check_name, is_export_name

__all__ = ["ErpSide", "open_erp_side"]

READ_CHUNK = 1024 * 1024
# A moved ack that met a name already taken got a numeric suffix (Dropzone.move_ack).
_MOVED_SUFFIX = re.compile(r"\.\d+$")


def open_erp_side(config: SftpConfig | FilesystemConfig) -> ErpSide:
    """The ERP's own session on the dropzone a connection config describes."""
    if not config.ack_path:
        raise errors.InvalidConfigError(
            "the connection has no ack_path: the ERP simulator has nowhere to write its answers"
        )
    return ErpSide(open_transport(config))


class ErpSide:
    """The other end of ``Dropzone``: a context manager over one transport session."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.label = transport.label
        self.export_path = transport.export_path
        self.ack_path = transport.ack_path

    def _require_ack_path(self) -> str:
        if not self.ack_path:
            raise errors.InvalidConfigError(f"{self.label}: no ack_path configured")
        return self.ack_path

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(errors.DropzoneError):
            self._t.remove(path)

    def list_exports(self) -> list[str]:
        return sorted(
            entry.name
            for entry in self._t.listdir(self.export_path)
            if entry.stat.is_file and is_export_name(entry.name)
        )

    def read_export(self, name: str, *, max_bytes: int) -> bytes:
        if not is_export_name(name):
            raise errors.InvalidConfigError(f"{self.label}: {name!r} is not an export file name")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        path = self._t.join(self.export_path, name)
        data = self._t.read_prefix(path, max_bytes + 1)
        if data is None:
            raise errors.MissingDirectoryError(f"{self.label}: export file {path} does not exist")
        return data

    def answered_exports(self) -> set[str]:
        ack_dir = self._require_ack_path()

        answered: set[str] = set()
        for folder in (None, naming.PROCESSED_DIR, naming.ERROR_DIR):
            directory = ack_dir if folder is None else self._t.join(ack_dir, folder)
            if folder is not None:
                st = self._t.stat(directory)
                if st is None or not st.is_dir:
                    continue  # created by the worker on its first move
            for entry in self._t.listdir(directory):
                name = entry.name if folder is None else _MOVED_SUFFIX.sub("", entry.name)
                parsed = naming.parse_ack_name(name)
                if parsed is not None and entry.stat.is_file:
                    answered.add(parsed[1])
        return answered

    def write_ack(self, name: str, body: bytes) -> str:
        ack_dir = self._require_ack_path()
        check_name(name, what="ack file name")
        if naming.parse_ack_name(name) is None:
            raise errors.InvalidConfigError(f"{self.label}: {name!r} is not an ack_/error_ file name")
        final = self._t.join(ack_dir, name)
        # Hidden and ending in .tmp: the ack poller stats exact names, and people listing
        # the directory do not see half-written files.  Built from checked parts only.
        tmp = self._t.join(ack_dir, f".{name}.{uuid.uuid4().hex}.tmp")
        published = False
        try:
            written, digest = self._t.write_new(tmp, [body], limit=len(body), exclusive=True, progress=None)
            if written != len(body) or digest != hashlib.sha256(body).hexdigest():
                raise errors.IntegrityError(f"{self.label}: {tmp}: wrote {written} of {len(body)} bytes")
            published = self._t.rename_noreplace(tmp, final)
        finally:
            if not published:
                self._remove_quietly(tmp)
        if not published:
            raise errors.DeliveryConflictError(f"{self.label}: {final} already exists; not overwriting")
        return final

    def read_export_buffer(self, name: str, *, max_bytes: int) -> bytearray | None:
        """The whole export in one buffer sized from its length (one copy, read 1 MiB at a
        time); None when it is larger than ``max_bytes`` (nothing read then).

        ``read_export`` returns bytes built up in pieces, which costs a second
        copy of a large file (over SFTP); this sizes one buffer from a stat.
        """
        if not is_export_name(name):
            raise errors.InvalidConfigError(f"{self.label}: {name!r} is not an export file name")
        path = self._t.join(self.export_path, name)
        st = self._t.stat(path)
        if st is None or not st.is_file:
            raise errors.MissingDirectoryError(f"{self.label}: export file {path} does not exist")
        if st.size > max_bytes:
            return None
        buffer = bytearray(st.size)
        filled = 0
        for chunk in self._t.iter_file(path, READ_CHUNK):
            end = filled + len(chunk)
            if end > max_bytes:
                return None  # grew since the stat (the pipeline never writes to a published export)
            buffer[filled:end] = chunk  # in place while within the stat's size
            filled = end
        del buffer[filled:]
        return buffer

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> ErpSide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._t.__exit__(exc_type, exc, tb)
