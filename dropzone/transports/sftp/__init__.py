"""SFTP dropzone on paramiko: verified host keys, pipelined writes, pooled connections.

Modules, one concern each:

* ``keys`` — our private key, host key fingerprints and key lines, pin matching;
* ``connect`` — how SFTP connects: socket, key exchange, host-key check, authentication;
* ``errors`` — what an SFTP error means: one table and one ``translate``;
* ``_paramiko`` — every use of paramiko's private internals (and the pinned range);
* ``transport`` — ``SftpTransport``, the primitives; ``pool`` — ``SftpConnectionPool``.

Why it looks the way it does (measured against OpenSSH and asyncssh servers):

* The socket is ours (TCP_NODELAY, connect timeout); paramiko's ``timeout``
  would only cover the TCP connect, so banner, handshake, auth and channel
  timeouts are set too, and the SFTP channel gets ``operation_timeout``.
* The host key is checked against the pinned one right after key exchange and
  BEFORE any authentication request: a server we do not trust never sees a
  password or a signature.  No pin means refusal (HOST_KEY_UNKNOWN) — trusting
  a key is an explicit operator act (``fetch_host_key`` + pin it).
* Writes are pipelined with our own response tracking.  paramiko's
  ``SFTPFile.set_pipelined`` registers write requests with no owner, so a
  failed write (disk full) can be dropped silently and ``close()`` swallows
  errors; here every status is collected and the first failure raised.
  Request size follows the server's ``limits@openssh.com`` answer (up to
  256 KiB), 32 KiB — the size every server must accept — otherwise.
* ``posix-rename@openssh.com`` publishes atomically (plain SFTP rename
  refuses existing targets on OpenSSH and asyncssh); ``fsync@openssh.com``
  makes the bytes durable before the rename when offered.
* A stalled server (SIGSTOP, a hung host) must not hold a worker thread for
  good: the channel's ``operation_timeout`` bounds waits for replies and for
  the SSH window, ``SendBoundSocket`` bounds a TCP send the peer never
  drains, and a connection that failed once fails every later request at
  once instead of waiting out the timeout again.
* Only current SSH algorithms are offered (``dropzone.ssh_algorithms``); a
  connection may re-enable a named legacy one (``legacy_algorithms``). A server
  that shares none fails with ``SSH_ALGORITHM_MISMATCH`` saying what it offered
  (``_paramiko.Transport`` keeps its KEXINIT), not with a retried "SSH error".
* A connection given back healthy is lent again without a probe round trip
  for ``probe_after_idle_seconds``: probing on every delivery cost ~5 % of a
  burst's throughput (benchmarks/).
* Every library exception goes through ``errors.translate`` — the only place.
"""

from __future__ import annotations

from dropzone.transports.sftp.connect import SendBoundSocket, fetch_host_key
from dropzone.transports.sftp.errors import SftpStatusError
from dropzone.transports.sftp.keys import host_key_fingerprint, load_private_key, public_key_line
from dropzone.transports.sftp.pool import SftpConnectionPool
from dropzone.transports.sftp.transport import SftpTransport

__all__ = [
    "SendBoundSocket",
    "SftpConnectionPool",
    "SftpStatusError",
    "SftpTransport",
    "fetch_host_key",
    "host_key_fingerprint",
    "load_private_key",
    "public_key_line",
]
