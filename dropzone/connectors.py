"""ERP connectors, and the one way to open a dropzone for a connection.

``open_dropzone(config)`` (and ``open_transport`` for tooling that plays the
ERP) is the one factory: activities, the CLI, the ERP simulator and the tests
all open dropzones here, and every one is labelled ``config.label``.

Connectors: one port, one registry, one implementation (DROPZONE_JSON_V1).

There is exactly one connector interface (a second, parallel one is how integrations drift apart). A new ERP
integration implements ``ERPConnectorPort`` and registers itself in the
registry; activities look connectors up by ``erp_connection.connector_type``
and never know which transport is behind one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from dropzone.connection_config import (
    FilesystemConfig,
    FtpsConfig,
    SftpConfig,
    parse_connection_config,
)
from dropzone.delivery import Dropzone, ProbeResult
from dropzone.errors import InvalidConfigError
from dropzone.export_v1 import EXPORT_FORMAT_VERSION
from dropzone.transports.base import Transport
from dropzone.transports.filesystem import FilesystemTransport
from dropzone.transports.ftps import FtpsTransport
from dropzone.transports.sftp import SftpConnectionPool, SftpTransport

DROPZONE_JSON_V1 = "DROPZONE_JSON_V1"

ConnectorConfig = SftpConfig | FilesystemConfig | FtpsConfig


def open_transport(config: ConnectorConfig, *, pool: SftpConnectionPool | None = None) -> Transport:
    """The primitives of the dropzone ``config`` describes, opened now (SFTP: connected,
    host key verified, authenticated, so connection problems surface here as project
    errors). With a ``pool``, an SFTP connection is borrowed and ``close()`` gives it back."""
    if isinstance(config, FilesystemConfig):
        return FilesystemTransport(config)
    if isinstance(config, SftpConfig):
        return pool.open(config) if pool is not None else SftpTransport.connect(config)
    if isinstance(config, FtpsConfig):
        return FtpsTransport.connect(config)  # no pool: a TLS login costs a few round trips
    raise TypeError(f"not a connection config: {type(config).__name__}")


def open_dropzone(config: ConnectorConfig, *, pool: SftpConnectionPool | None = None) -> Dropzone:
    """A ``Dropzone`` session (a context manager) on the dropzone ``config`` describes."""
    return Dropzone(open_transport(config, pool=pool))


class ERPConnectorPort(Protocol):
    """What every ERP connector offers the activities."""

    connector_type: str
    export_format_version: str

    def parse_config(self, raw: Mapping[str, Any]) -> ConnectorConfig: ...

    def describe(self, config: ConnectorConfig) -> str:
        """A short label for summaries and tables; never a credential."""
        ...

    def session(self, config: ConnectorConfig) -> AbstractContextManager[Dropzone]:
        """An open dropzone session (a context manager): delivery, acks, probing."""
        ...

    def test_connection(self, config: ConnectorConfig) -> ProbeResult: ...


class DropzoneJsonV1Connector:
    """orderflow_export_json_v1 files dropped into an SFTP, FTPS or filesystem dropzone."""

    connector_type = DROPZONE_JSON_V1
    export_format_version = EXPORT_FORMAT_VERSION

    def __init__(self, sftp_pool: SftpConnectionPool | None = None) -> None:
        # One pool per worker process: opening an SSH connection costs ~100 ms.
        self._sftp_pool = sftp_pool or SftpConnectionPool()

    def parse_config(self, raw: Mapping[str, Any]) -> ConnectorConfig:
        return parse_connection_config(dict(raw))

    def describe(self, config: ConnectorConfig) -> str:
        return config.label

    def session(self, config: ConnectorConfig) -> Dropzone:
        # SFTP connections come from the worker's pool (a handshake costs ~100 ms).
        return open_dropzone(config, pool=self._sftp_pool)

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
