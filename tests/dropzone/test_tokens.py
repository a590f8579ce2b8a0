"""API tokens' per-request reads on their own engine (``create_ledger_engine(..., lookups=True)``:
autocommit, no pre-ping), against the session's real PostgreSQL: ``read_first`` must survive a
pooled connection the database cut, and the push's one statement must answer both questions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from dropzone.errors import LedgerUnavailableError
from dropzone.ledger.engine import create_ledger_engine
from dropzone.ledger.tokens import ApiTokens
from tests.dropzone.test_ledger import connection, open_attempt  # noqa: F401  (fixture)
from tests.helpers import free_port


@pytest.fixture
def tokens(ledger, migrated_db_url) -> Iterator[ApiTokens]:
    made = ApiTokens(ledger.engine, lookups=create_ledger_engine(migrated_db_url, pool_size=2, lookups=True))
    try:
        yield made
    finally:
        made.dispose()


def _backend_pid(tokens: ApiTokens) -> int:
    """The server process of the connection the lookups engine's next read gets."""
    with tokens._lookups.connect() as conn:  # noqa: SLF001  (the engine under test)
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_cut_pooled_connection_costs_the_read_nothing(tokens, ledger):
    org = uuid.uuid4()
    token, record = tokens.create(org, "backend")
    assert tokens.authenticate(token) == record
    cut_pid = _backend_pid(tokens)
    assert tokens._lookups.pool.checkedin() == 1  # noqa: SLF001  the next read gets that connection

    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": cut_pid}).scalar_one()

    # No pre-ping: the read meets the dead connection, and read_first runs it once more.
    assert tokens.authenticate(token) == record
    assert tokens.authenticate_for_draft(token, uuid.uuid4()) == (record, None)
    assert _backend_pid(tokens) != cut_pid


def test_a_database_that_is_down_is_an_error_not_a_loop(ledger):
    port = free_port()
    down = create_ledger_engine(f"postgresql://orderflow:s3cret-pw@127.0.0.1:{port}/ledger", lookups=True)
    tokens = ApiTokens(ledger.engine, lookups=down)
    try:
        with pytest.raises(LedgerUnavailableError) as caught:
            tokens.authenticate("dzt_" + "a" * 43)
        assert "s3cret-pw" not in str(caught.value)
    finally:
        tokens.dispose()


def test_one_statement_answers_the_token_and_the_drafts_owner(tokens, ledger, connection):  # noqa: F811
    ours, record = tokens.create(connection.org_id, "ours")
    theirs, their_record = tokens.create(uuid.uuid4(), "theirs")
    draft_order_id = uuid.uuid4()

    assert tokens.authenticate_for_draft(ours, draft_order_id) == (record, None)  # no attempt yet
    open_attempt(ledger, connection, draft_order_id)
    assert tokens.authenticate_for_draft(ours, draft_order_id) == (record, connection.org_id)
    # Another organisation's token learns the owner, so the API can answer 404 rather than push.
    assert tokens.authenticate_for_draft(theirs, draft_order_id) == (their_record, connection.org_id)

    tokens.revoke(record.id)
    assert tokens.authenticate_for_draft(ours, draft_order_id) is None
    assert tokens.authenticate_for_draft("not-a-token", draft_order_id) is None
    assert tokens.authenticate_for_draft("dzt_" + "a" * 43, draft_order_id) is None  # well formed, unknown


def test_a_connections_organisation_is_remembered_once_known(tokens, connection):  # noqa: F811
    assert tokens.known_connection_org(connection.id) is None
    assert tokens.connection_org(connection.id) == connection.org_id
    assert tokens.known_connection_org(connection.id) == connection.org_id
    assert tokens.connection_org(uuid.uuid4()) is None
