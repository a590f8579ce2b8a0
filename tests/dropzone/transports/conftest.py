"""Shared fixtures for the transport tests (servers and `sftp_pool` come from tests/conftest.py and tests/fixtures/)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["openssh", "asyncssh"])
def sftp_server(request: pytest.FixtureRequest):
    """Each SFTP test runs against OpenSSH and against asyncssh."""
    name = "openssh_server" if request.param == "openssh" else "asyncssh_sftp_server"
    return request.getfixturevalue(name)
