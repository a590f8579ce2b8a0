"""The ledger's database: URLs, the pooled engine, and the one place where database errors are translated.

``LedgerBase`` holds what every part of ``Ledger`` shares (the engine, its
sessions, one transaction per call); the parts themselves are mixins in this
package (``connections``, ``export_queries``, ``ack_rejections``), assembled
in ``repository``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self
from uuid import UUID

import psycopg
from sqlalchemy import Connection, Engine, Executable, Row, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from dropzone.crypto import ConfigCipher
from dropzone.errors import InvalidConfigError, LedgerUnavailableError

DATABASE_URL_ENV = "DROPZONE_DATABASE_URL"
# libpq waits forever by default; an activity must fail fast and let Temporal retry.
CONNECT_TIMEOUT_SECONDS = 10


def psycopg_url(database_url: str | URL) -> URL:
    """``postgresql://`` (as printed by most tools) → the psycopg 3 driver."""
    try:
        url = make_url(database_url)
    except sa_exc.ArgumentError:
        # Not chained: the cause would repeat the URL, password included.
        raise InvalidConfigError(
            "invalid database URL (expected postgresql+psycopg://user:password@host:5432/dbname)"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def describe_database(url: str | URL) -> str:
    """``host:port/dbname`` for messages: never the user or password."""
    url = make_url(url)
    host: Any = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):  # repeated ?host= (multi-host URLs)
        host = ",".join(host)
    return f"{host}:{url.port or 5432}/{url.database or ''}"


_UNAVAILABLE = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # pool exhausted: the database is too slow or too busy
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


@contextmanager
def translate_db_errors(url: str | URL) -> Iterator[None]:
    """Turn every "cannot talk to the database" error into LedgerUnavailableError.

    The message is built from host, port and database name only: SQLAlchemy's and
    libpq's own messages are kept as ``__cause__`` for logs, never shown.
    """
    try:
        yield
    except _UNAVAILABLE as exc:
        raise LedgerUnavailableError(f"database unavailable: {describe_database(url)}") from exc
    except sa_exc.DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise LedgerUnavailableError(f"database unavailable: {describe_database(url)}") from exc


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled connection in autocommit, for work that is one statement at a time: BEGIN and
    COMMIT/ROLLBACK would be two more round trips to PostgreSQL each time (a ping and the
    statement, against four with them). Each status callback and each HTTP API request does
    such work (benchmarks/bench_webhooks.py, benchmarks/bench_api.py)."""
    with translate_db_errors(engine.url), engine.connect() as plain:
        yield plain.execution_options(isolation_level="AUTOCOMMIT")


def read_first(lookups: Engine, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
    """The first row of one read on a ``lookups`` engine (``create_ledger_engine(..., lookups=True)``).

    That engine skips the pre-ping, so a pooled connection that the database cut
    (a restart, a firewall) fails here: SQLAlchemy then drops the pool's older
    connections too, and the read runs once more on a fresh one (safe: it
    changes nothing). The HTTP API makes such reads on every request
    (benchmarks/bench_api.py).
    """
    for attempt in (1, 2):
        try:
            with translate_db_errors(lookups.url), lookups.connect() as connection:
                return connection.execute(statement, params).first()
        except LedgerUnavailableError as exc:
            cut = isinstance(exc.__cause__, sa_exc.DBAPIError) and exc.__cause__.connection_invalidated
            if attempt == 2 or not cut:
                raise
    raise AssertionError("unreachable")


def create_ledger_engine(
    database_url: str | URL, *, pool_size: int = 10, pooled: bool = True, lookups: bool = False
) -> Engine:
    """The pooled engine of a process; ``lookups=True``: one for ``read_first`` only (autocommit, no pre-ping)."""
    url = psycopg_url(database_url)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if not pooled:  # one-off work such as migrations
        return create_engine(url, poolclass=NullPool, connect_args=connect_args, hide_parameters=True)
    extra: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if lookups else {}
    return create_engine(
        url,
        # A statement's parameters are customer data (ERP texts, order ids) and
        # would otherwise be quoted in every DBAPIError's text.
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A pooled connection may have been cut by a database restart or a
        # firewall; test it on checkout instead of failing the activity.
        # (read_first retries instead: a ping is a round trip per request.)
        pool_pre_ping=not lookups,
        connect_args=connect_args,
        **extra,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def row_id(value: UUID | str, not_found: type[Exception], what: str) -> UUID:
    """Ids arrive as strings from the CLI; a malformed one names no existing row."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise not_found(f"{what} {value} not found") from None


class LedgerBase:
    """One pooled engine per process: a new connection per transaction made the ledger ten times slower."""

    def __init__(self, engine: Engine, cipher: ConfigCipher) -> None:
        self._engine = engine
        self._cipher = cipher
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def connect(cls, database_url: str, cipher: ConfigCipher, *, pool_size: int = 10) -> Self:
        return cls(create_ledger_engine(database_url, pool_size=pool_size), cipher)

    @property
    def engine(self) -> Engine:
        return self._engine

    def dispose(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        """One ``SELECT 1``: LedgerUnavailableError (host, port, database only) when the database does not answer."""
        with translate_db_errors(self._engine.url), self._engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def __repr__(self) -> str:
        return f"Ledger({describe_database(self._engine.url)})"

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with translate_db_errors(self._engine.url), self._sessions.begin() as session:
            yield session
