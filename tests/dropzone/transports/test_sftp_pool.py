"""SftpConnectionPool against OpenSSH sshd and asyncssh: reuse, dead connections, restarts, bounds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dropzone import errors
from dropzone.connection_config import parse_connection_config
from dropzone.connectors import open_dropzone
from dropzone.delivery import Dropzone
from dropzone.transports.sftp import SftpConnectionPool, SftpTransport
from tests.dropzone.transports._sftp import FILENAME, deliver, listing
from tests.dropzone.transports._util import body_of, chunked, sha


def test_pool_reuses_and_replaces_dead_connections(sftp_server, sftp_pool: SftpConnectionPool):
    cfg = parse_connection_config(sftp_server.config())
    with sftp_pool.acquire(cfg) as transport:
        assert isinstance(transport, SftpTransport)
        deliver(Dropzone(transport), b"{}", name="one.json")
        first = transport._session
    with sftp_pool.acquire(cfg) as transport:
        deliver(Dropzone(transport), b"{}", name="two.json")
        assert transport._session is first
    assert (sftp_pool.created, sftp_pool.reused) == (1, 1)

    first.transport.close()  # the connection dies while idle
    with sftp_pool.acquire(cfg) as transport:
        assert transport._session is not first
        deliver(Dropzone(transport), b"{}", name="three.json")
    assert (sftp_pool.created, sftp_pool.reused, sftp_pool.discarded) == (2, 1, 1)

    # A different endpoint key (other credentials) never gets that connection.
    other = parse_connection_config(sftp_server.config(password=None, ssh_key=sftp_server.keys.ed25519))
    with sftp_pool.acquire(other) as transport:
        assert Dropzone(transport).probe().ok
    assert sftp_pool.created == 3
    # open_dropzone(pool=...) lends from the same pool.
    with open_dropzone(cfg, pool=sftp_pool) as dz:
        assert dz.probe().ok
    assert sftp_pool.reused == 2


def test_pool_survives_a_server_restart(sftp_server):
    # Probing on every loan: a connection given back moments ago is otherwise trusted
    # for probe_after_idle_seconds, and whether paramiko has read the restarted
    # server's EOF by then is a race (the first request would fail, transiently).
    cfg = parse_connection_config(sftp_server.config())
    with SftpConnectionPool(probe_after_idle_seconds=0) as pool:
        with pool.acquire(cfg) as transport:
            deliver(Dropzone(transport), b"{}", name="before.json")
        sftp_server.stop()
        sftp_server.start()
        with pool.acquire(cfg) as transport:
            deliver(Dropzone(transport), b"{}", name="after.json")
        assert (pool.created, pool.reused, pool.discarded) == (2, 0, 1)


def test_pool_concurrent_threads_get_their_own_connections(sftp_server, sftp_pool):
    from concurrent.futures import ThreadPoolExecutor

    cfg = parse_connection_config(sftp_server.config())
    data = body_of(2 * 1024 * 1024)

    def work(i: int) -> bool:
        with sftp_pool.acquire(cfg) as transport:
            return deliver(Dropzone(transport), data, name=f"file{i}.json", chunk=1 << 20).already_present

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(work, range(12))) == [False] * 12
    assert 1 <= sftp_pool.created <= 4 and sftp_pool.created + sftp_pool.reused == 12
    local = sftp_server.local_path(cfg.export_path)
    assert all((local / f"file{i}.json").read_bytes() == data for i in range(12))


def test_pool_idle_expiry_and_bounds(sftp_server):
    cfg = parse_connection_config(sftp_server.config())
    with SftpConnectionPool(max_idle=1, max_idle_seconds=0.2) as pool:
        a, b = pool.open(cfg), pool.open(cfg)
        a.close()
        b.close()
        assert pool.idle_count() == 1  # bounded
        time.sleep(0.3)
        with pool.acquire(cfg):
            pass
        assert pool.created == 3  # the idle one had expired


def test_server_stopped_mid_delivery_then_retry_succeeds(sftp_server, sftp_pool):
    data = body_of(8 * 1024 * 1024)
    cfg = parse_connection_config(sftp_server.config(operation_timeout_seconds=5))

    def source() -> Iterator[bytes]:
        for i, chunk in enumerate(chunked(data, 1 << 20)):
            if i == 3:
                sftp_server.stop()
            yield chunk

    try:
        started = time.monotonic()
        with pytest.raises(errors.DropzoneUnavailableError), sftp_pool.acquire(cfg) as transport:
            Dropzone(transport).deliver(FILENAME, source(), size=len(data), sha256=sha(data), token="tok1")
        assert time.monotonic() - started < 8
        assert sftp_pool.idle_count() == 0  # the broken connection was not pooled
    finally:
        sftp_server.start()
    # The retry (same token, as Temporal retries the same execution) completes.
    with sftp_pool.acquire(cfg) as transport:
        result = Dropzone(transport).deliver(FILENAME, chunked(data, 1 << 20), size=len(data), sha256=sha(data), token="tok1")
    assert result.already_present is False
    assert sftp_server.local_path(result.path).read_bytes() == data
    assert listing(sftp_server, cfg.export_path) == [FILENAME]
