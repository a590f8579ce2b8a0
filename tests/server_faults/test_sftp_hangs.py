"""An SFTP server that hangs (SIGSTOP) mid-upload, a send it never drains, and logins cut off or unanswered.

See tests/server_faults/__init__.py for what every test here checks.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paramiko.packet import Packetizer
from temporalio.api.enums.v1 import TimeoutType
from temporalio.client import Client

from dropzone.ledger import Ledger
from dropzone.object_store import ObjectStore
from dropzone.transports.sftp import SendBoundSocket
from starter.api import start_export
from tests.chaos.observer import PartialReadObserver
from tests.chaos.report import record
from tests.chaos.scale import size
from tests.conftest import add_connection
from tests.helpers import eventually, make_draft
from tests.server_faults.support import (
    _fd_targets,
    activity_attempts,
    adapters_for,
    back_to,
    check_delivered_once,
    deliveries_in_progress,
    failing_deliveries,
    HEARTBEAT_TIMEOUT,
    leftovers,
    MARGIN,
    only_row,
    closing_transports,
    paramiko_transports,
    pending_deliver,
    Resources,
    results_of,
    running_worker,
    SFTP_CONNECT_TIMEOUT,
    SFTP_OPERATION_TIMEOUT,
    slow_down_source,
    tcp_connections_to,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.chaos]


# ---------------------------------------------------------------------------
# a) SFTP server hangs (SIGSTOP) mid-upload
# ---------------------------------------------------------------------------

# The SDK may hold a heartbeat back for up to 0.8 x the timeout before sending
# it, so the server can hear of an upload's last progress that much after it
# happened: the stuck attempt must end within both together.
STALL_BOUND = HEARTBEAT_TIMEOUT.total_seconds() * 1.8 + MARGIN
# The stuck thread is ended by the connection's operation timeout (sftp.py).
STUCK_THREAD_BOUND = SFTP_OPERATION_TIMEOUT + MARGIN


async def upload_in_progress(export_dir: Path, *, at_least: int, within: float) -> Path:
    def grown() -> Path | None:
        for name in leftovers(export_dir):
            with contextlib.suppress(FileNotFoundError):
                if (export_dir / name).stat().st_size >= at_least:
                    return export_dir / name
        return None

    return await eventually(grown, timeout=within, what="an upload in progress", every=0.02)


async def heartbeat_timeout_seen(client: Client, draft_id: str, *, within: float) -> float:
    """When (monotonic) the pending deliver was first seen failed on a heartbeat timeout.

    Polled every 0.1 s, so at most that much later than the server's timeout
    (the pending activity does not say when its attempt ended).
    """
    async def timed_out() -> float | None:
        pending = await pending_deliver(client, draft_id)
        failure = pending.last_failure if pending is not None else None
        if failure is None or not failure.HasField("timeout_failure_info"):
            return None
        assert failure.timeout_failure_info.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT, failure
        return time.monotonic()

    return await eventually(timed_out, timeout=within, what=f"the stalled delivery of {draft_id} timing out")


@dataclass
class Stall:
    attempt_timed_out_after: float
    thread_returned_after: float


async def stall_one_upload(  # type: ignore[no-untyped-def]
    client: Client,
    queue: str,
    server,
    ledger: Ledger,
    store: ObjectStore,
    *,
    connection_id: uuid.UUID,
    draft: dict[str, Any],
    export_dir: Path,
    listener: bool,
) -> Stall:
    """Start one export, SIGSTOP the server in the middle of its upload, and
    measure when Temporal ends the attempt and when its thread comes back."""
    await start_export(client, erp_connection_id=connection_id, draft=draft, store=store, task_queue=queue)
    await upload_in_progress(export_dir, at_least=1024 * 1024, within=30)
    stalled = time.monotonic()
    server.pause(listener=listener)
    try:
        timed_out = await heartbeat_timeout_seen(client, draft["draft_order_id"], within=STALL_BOUND + 10)
        export_id = str(only_row(ledger, draft["draft_order_id"]).id)
        await eventually(
            lambda: (export_id, 1) not in deliveries_in_progress(),
            timeout=STUCK_THREAD_BOUND,
            what="the stalled attempt's worker thread returning",
        )
        returned = time.monotonic()
    finally:
        server.resume()
    return Stall(attempt_timed_out_after=timed_out - stalled, thread_returned_after=returned - stalled)


async def test_a_send_the_server_never_drains_ends_within_the_operation_timeout():
    """Below the SSH window: a hung server whose socket buffers are full. paramiko
    retries such a send forever; through ``SendBoundSocket`` (what every SFTP
    connection is given) its own write loop ends with EOFError, a lost connection."""
    ours, server = socket.socketpair()
    with ours, server:
        ours.settimeout(0.1)  # what paramiko sets on the socket it is handed
        packetizer = Packetizer(SendBoundSocket(ours, stall_seconds=1.0))
        began = time.monotonic()
        with pytest.raises(EOFError):
            packetizer.write_all(b"\0" * (64 << 20))  # far more than the buffers hold
        assert time.monotonic() - began <= 1.0 + MARGIN


@pytest.mark.parametrize("hang", ["whole_server", "session_only"])
async def test_sftp_server_hung_mid_upload_times_out_and_retry_delivers_once(
    client: Client, openssh_server, ledger, object_store, sftp_pool, fast_heartbeats, monkeypatch, hang
):
    """SIGSTOP the sshd processes serving an upload (``session_only``), or those
    and the listener (``whole_server``: retries cannot even connect): the
    heartbeat timeout ends the stuck attempt, the stuck thread returns within
    the connection's operation timeout, the retry delivers one whole file,
    and the worker process is left with no extra thread or descriptor."""
    org_id = uuid.uuid4()
    config = openssh_server.config(
        operation_timeout_seconds=SFTP_OPERATION_TIMEOUT, connect_timeout_seconds=SFTP_CONNECT_TIMEOUT
    )
    config.pop("ack_path")
    connection_id = add_connection(ledger, org_id, config)
    export_dir = openssh_server.local_path(config["export_path"])
    adapters = adapters_for(ledger, object_store, sftp_pool)

    # The baseline is the steady state: every pool (ledger, S3, SFTP) warmed by
    # one export (into a directory of its own), idle SFTP connections closed.
    warm_org = uuid.uuid4()
    warm = make_draft(org_id=warm_org)
    warm_export_path = openssh_server.config()["export_path"]
    warm_connection = add_connection(ledger, warm_org, {**config, "export_path": warm_export_path})
    async with running_worker(client, adapters) as queue:
        await start_export(client, erp_connection_id=warm_connection, draft=warm, task_queue=queue)
        assert (await results_of(client, [warm["draft_order_id"]]))[0].status == "SENT"
    sftp_pool.discard_idle()
    # paramiko's transport thread sees its close within 0.1 s
    await eventually(lambda: closing_transports() == 0, timeout=5, what="the closed connections' threads ending")
    baseline, baseline_fds = Resources.now(openssh_server.port), _fd_targets()
    baseline_transports = paramiko_transports()

    # ~5 MB at ~2.5 MB/s: two seconds of upload to stall in the middle of.
    slow_down_source(monkeypatch, object_store, piece=128 * 1024, pause=0.05)
    drafts = [make_draft(org_id=org_id, lines=20_000) for _ in range(size(full=3, reduced=1))]
    stalls: list[Stall] = []
    with PartialReadObserver([export_dir]) as observer:
        async with running_worker(client, adapters) as queue:
            for draft in drafts:
                stalls.append(
                    await stall_one_upload(
                        client, queue, openssh_server, ledger, object_store, connection_id=connection_id,
                        draft=draft, export_dir=export_dir, listener=hang == "whole_server",
                    )
                )
                assert (await results_of(client, [draft["draft_order_id"]]))[0].status == "SENT"
    report = observer.report

    tally, _ = check_delivered_once(ledger, export_dir, drafts, status="SENT")
    for draft in drafts:
        (deliver,) = await activity_attempts(client, draft["draft_order_id"], "deliver")
        assert deliver.attempt > 1, "the stalled attempt must have been retried"
    for stall in stalls:
        assert stall.attempt_timed_out_after <= STALL_BOUND, stall
        assert stall.thread_returned_after <= STUCK_THREAD_BOUND, stall

    # No leak: the stuck connection was closed, its transport thread ended, and
    # the process holds no more threads or descriptors than before the stall.
    sftp_pool.discard_idle()
    await eventually(
        lambda: paramiko_transports() <= baseline_transports,
        timeout=5,
        what="the SFTP connections' transport threads ending",
    )
    assert tcp_connections_to(openssh_server.port) == 0
    await back_to(baseline, baseline_fds, sftp_port=openssh_server.port, within=10)
    assert report.partial == [] and report.rewritten == []
    record(
        f"sftp server hung mid-upload ({hang.replace('_', ' ')})",
        exports=len(drafts),
        faults={"sftp_sigstop": len(stalls)},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
        stall_to_attempt_timeout_s=round(max(s.attempt_timed_out_after for s in stalls), 2),
        stuck_thread_returned_after_s=round(max(s.thread_returned_after for s in stalls), 2),
    )


# A server that dies or hangs during a login is not a wrong password: paramiko
# reports all three as "authentication failed", and only a refusal may end the
# export as AUTH_FAILED (found by the restart test below: a restart that met a
# login failed the export for good).
LOGIN_TIMEOUT = 2.0


@pytest.mark.parametrize("fault", ["drop", "hang"])
async def test_sftp_login_cut_off_or_unanswered_is_retried_not_auth_failed(
    client: Client, asyncssh_sftp_server, ledger, object_store, sftp_pool, fast_heartbeats, fault
):
    org_id = uuid.uuid4()
    config = asyncssh_sftp_server.config(
        operation_timeout_seconds=LOGIN_TIMEOUT, connect_timeout_seconds=LOGIN_TIMEOUT
    )
    config.pop("ack_path")
    connection_id = add_connection(ledger, org_id, config)
    export_dir = asyncssh_sftp_server.local_path(config["export_path"])
    draft = make_draft(org_id=org_id)
    with PartialReadObserver([export_dir]) as observer:
        async with running_worker(client, adapters_for(ledger, object_store, sftp_pool)) as queue:
            asyncssh_sftp_server.fail_logins(fault)
            try:
                await start_export(client, erp_connection_id=connection_id, draft=draft, task_queue=queue)
                failures = await failing_deliveries(client, draft["draft_order_id"], attempts=3, within=30)
            finally:
                asyncssh_sftp_server.fail_logins(None)
            (result,) = await results_of(client, [draft["draft_order_id"]])
    report = observer.report

    assert result.status == "SENT"
    assert {f.last_failure.application_failure_info.type for f in failures} == {"DROPZONE_UNAVAILABLE"}
    # Failure messages travel encrypted (the payload codec): read them as an operator with the key does.
    messages = [str(await client.data_converter.decode_failure(f.last_failure)) for f in failures]
    assert all("during authentication" in message for message in messages), messages
    tally, _ = check_delivered_once(ledger, export_dir, [draft], status="SENT")
    assert report.partial == [] and report.rewritten == []
    record(
        f"sftp login {'cut off' if fault == 'drop' else 'unanswered'}",
        exports=1,
        faults={f"login_{fault}": len(failures)},
        lost=tally.lost,
        duplicated=tally.duplicated,
        partial_reads=len(report.partial),
    )
