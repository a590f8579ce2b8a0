"""Shared fixtures for the transport tests (the servers are fixtures of tests/fixtures/, loaded by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dropzone.transports.sftp import SftpConnectionPool


@pytest.fixture(params=["openssh", "asyncssh"])
def sftp_server(request: pytest.FixtureRequest):
    """Each SFTP test runs against OpenSSH and against asyncssh."""
    name = "openssh_server" if request.param == "openssh" else "asyncssh_sftp_server"
    return request.getfixturevalue(name)


@pytest.fixture
def sftp_pool() -> Iterator[SftpConnectionPool]:
    pool = SftpConnectionPool()
    try:
        yield pool
    finally:
        pool.close()
