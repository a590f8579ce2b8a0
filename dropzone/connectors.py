"""ERP connectors: one port, one registry, one implementation (DROPZONE_JSON_V1).

There is exactly one connector interface (a second, parallel one is how integrations drift apart). A new ERP
integration implements ``ERPConnectorPort`` and registers itself in the
registry; activities look connectors up by ``erp_connection.connector_type``
and never know which transport is behind one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from dropzone.connection_config import (
    FilesystemConfig,
    SftpConfig,
    parse_connection_config,
)
from dropzone.errors import InvalidConfigError
from dropzone.export_v1 import EXPORT_FORMAT_VERSION
from dropzone.transports.base import DeliveryResult, Dropzone, ProbeResult
from dropzone.transports.filesystem import FilesystemDropzone
from dropzone.transports.sftp import SftpConnectionPool

DROPZONE_JSON_V1 = "DROPZONE_JSON_V1"

ConnectorConfig = SftpConfig | FilesystemConfig


class ERPConnectorPort(Protocol):
    """What every ERP connector offers the activities."""

    connector_type: str
    export_format_version: str

    def parse_config(self, raw: Mapping[str, Any]) -> ConnectorConfig: ...

    def describe(self, config: ConnectorConfig) -> str:
        """A short label for summaries and tables; never a credential."""
        ...

    def export(
        self,
        config: ConnectorConfig,
        *,
        filename: str,
        chunks: Iterable[bytes],
        size: int,
        sha256: str,
        token: str,
        progress: Callable[[int], None] | None = None,
        attempt: int = 1,
    ) -> DeliveryResult: ...

    def session(self, config: ConnectorConfig) -> AbstractContextManager[Dropzone]:
        """An open dropzone session, for ack handling."""
        ...

    def test_connection(self, config: ConnectorConfig) -> ProbeResult: ...


class DropzoneJsonV1Connector:
    """orderflow_export_json_v1 files dropped into an SFTP or filesystem dropzone."""

    connector_type = DROPZONE_JSON_V1
    export_format_version = EXPORT_FORMAT_VERSION

    def __init__(self, sftp_pool: SftpConnectionPool | None = None) -> None:
        # One pool per worker process: opening an SSH connection costs ~100 ms.
        self._sftp_pool = sftp_pool or SftpConnectionPool()

    def parse_config(self, raw: Mapping[str, Any]) -> ConnectorConfig:
        return parse_connection_config(dict(raw))

    def describe(self, config: ConnectorConfig) -> str:
        if isinstance(config, SftpConfig):
            port = "" if config.port == 22 else f":{config.port}"
            return f"sftp://{config.host}{port}{config.export_path}"
        return f"file://{config.export_path}"

    @contextmanager
    def session(self, config: ConnectorConfig) -> Iterator[Dropzone]:
        if isinstance(config, SftpConfig):
            with self._sftp_pool.acquire(config) as dropzone:
                yield dropzone
        else:
            dropzone = FilesystemDropzone(config)
            try:
                yield dropzone
            finally:
                dropzone.close()

    def export(
        self,
        config: ConnectorConfig,
        *,
        filename: str,
        chunks: Iterable[bytes],
        size: int,
        sha256: str,
        token: str,
        progress: Callable[[int], None] | None = None,
        attempt: int = 1,
    ) -> DeliveryResult:
        with self.session(config) as dropzone:
            return dropzone.deliver(
                filename, chunks, size=size, sha256=sha256, token=token, progress=progress, attempt=attempt
            )

    def test_connection(self, config: ConnectorConfig) -> ProbeResult:
        with self.session(config) as dropzone:
            return dropzone.probe()

    def close(self) -> None:
        self._sftp_pool.close()


class ConnectorRegistry:
    def __init__(self) -> None:
        self._connectors: dict[str, ERPConnectorPort] = {}

    def register(self, connector: ERPConnectorPort) -> None:
        self._connectors[connector.connector_type] = connector

    def get(self, connector_type: str) -> ERPConnectorPort:
        try:
            return self._connectors[connector_type]
        except KeyError:
            known = ", ".join(sorted(self._connectors)) or "none"
            raise InvalidConfigError(
                f"unknown connector type {connector_type!r} (known: {known})"
            ) from None

    def types(self) -> list[str]:
        return sorted(self._connectors)

    def close(self) -> None:
        for connector in self._connectors.values():
            close = getattr(connector, "close", None)
            if close is not None:
                close()


def default_registry() -> ConnectorRegistry:
    registry = ConnectorRegistry()
    registry.register(DropzoneJsonV1Connector())
    return registry
