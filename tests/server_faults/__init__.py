"""Servers that fail, end to end (one module per kind of fault; shared pieces in support.py).

Each test runs real exports through the Temporal dev server with a worker in
this process and takes one real server away mid-run: the OpenSSH dropzone
hangs (SIGSTOP) or restarts, SeaweedFS restarts, a private PostgreSQL
restarts, the dropzone's disk fills up, or the dropzone refuses writes. What
is checked is what the ERP and an operator see afterwards: the bytes in the
dropzone, the ledger rows, the objects in the bucket, the workflow results
and their histories.

Retry intervals and the delivery heartbeat timeout are shortened for the
test's worker (``FAST_POLICIES``, handed to ``build_worker``), so that a
reduced run stays well under a minute per test.
"""
