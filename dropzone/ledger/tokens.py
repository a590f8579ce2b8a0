"""API tokens (table ``api_token``): one organisation each, only their sha256 stored;
and the two ownership look-ups the HTTP API makes on every push (connection, draft).

A token is ``dzt_`` plus 32 random bytes (URL-safe base64). It is shown once, when
created; the table keeps its sha256, so a database dump gives nobody a working
token, and a lookup is one indexed equality on the hash (the token has 256 bits
of entropy, so a plain hash is enough: no salt, no slow KDF).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from dropzone.errors import InvalidConfigError, TokenNotFoundError
from dropzone.ledger.models import ApiToken, ErpConnection, ErpExport, UtcDatetime, _Record
from dropzone.ledger.engine import read_first, translate_db_errors

TOKEN_PREFIX = "dzt_"
TOKEN_BYTES = 32
MAX_NAME_CHARS = 200
# Connections whose organisation a process remembers (an org never changes; rows are never deleted).
CONNECTION_CACHE_SIZE = 10_000


class ApiTokenRecord(_Record):
    """A token without its secret: what `tokens list` shows and what a request acts as."""

    id: UUID
    org_id: UUID
    name: str
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


_RECORD_COLUMNS = (ApiToken.id, ApiToken.org_id, ApiToken.name, ApiToken.created_at, ApiToken.revoked_at)

# The per-request statements, built once: building a select() costs more than running it.
_ACTIVE_TOKEN = select(*_RECORD_COLUMNS).where(
    ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None)
)
_DRAFT_OWNER = select(ErpExport.org_id).where(ErpExport.draft_order_id == bindparam("draft_order_id")).limit(1)
# A push asks both at once: one round trip instead of two.
_ACTIVE_TOKEN_AND_DRAFT_OWNER = select(*_RECORD_COLUMNS, _DRAFT_OWNER.scalar_subquery().label("draft_owner")).where(
    ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None)
)
_CONNECTION_ORG = select(ErpConnection.org_id).where(ErpConnection.id == bindparam("connection_id"))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


class ApiTokens:
    """Create, look up, list and revoke API tokens. Shares the ledger's pooled engine."""

    def __init__(self, engine: Engine, *, lookups: Engine | None = None) -> None:
        """``lookups``: an engine from ``create_ledger_engine(..., lookups=True)`` for the
        per-request reads (the HTTP API's); the ledger's own engine by default."""
        self._engine = engine
        self._lookups = lookups if lookups is not None else engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._connection_orgs: dict[UUID, UUID] = {}

    def dispose(self) -> None:
        """Close the ``lookups`` engine's connections (the ledger's engine is the ledger's to close)."""
        if self._lookups is not self._engine:
            self._lookups.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with translate_db_errors(self._engine.url), self._sessions.begin() as session:
            yield session

    def create(self, org_id: UUID, name: str) -> tuple[str, ApiTokenRecord]:
        """A new token for ``org_id``: (the token itself, shown once; its record)."""
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidConfigError(f"token name must be 1 to {MAX_NAME_CHARS} characters")
        token = new_token()
        row = ApiToken(
            id=uuid.uuid4(), org_id=org_id, name=name, token_hash=hash_token(token), created_at=datetime.now(UTC)
        )
        with self._transaction() as session:
            session.add(row)
            session.flush()
            return token, ApiTokenRecord.model_validate(row)

    def authenticate(self, token: str) -> ApiTokenRecord | None:
        """The active token with this value, or None (unknown, malformed or revoked).

        Asked on every request, so a plain SELECT of the columns, no ORM entity.
        """
        if not _well_formed(token):
            return None
        row = read_first(self._lookups, _ACTIVE_TOKEN, {"token_hash": hash_token(token)})
        return ApiTokenRecord.model_validate(row._asdict()) if row is not None else None

    def authenticate_for_draft(
        self, token: str, draft_order_id: UUID
    ) -> tuple[ApiTokenRecord, UUID | None] | None:
        """``authenticate`` plus the organisation whose export attempts use this draft id
        (None: no attempt has it yet), in one statement: (the token, that organisation)."""
        if not _well_formed(token):
            return None
        params = {"token_hash": hash_token(token), "draft_order_id": draft_order_id}
        row = read_first(self._lookups, _ACTIVE_TOKEN_AND_DRAFT_OWNER, params)
        if row is None:
            return None
        fields = row._asdict()
        owner = fields.pop("draft_owner")
        return ApiTokenRecord.model_validate(fields), owner

    def known_connection_org(self, connection_id: UUID) -> UUID | None:
        """``connection_org`` if this process has looked it up before (no I/O), else None."""
        return self._connection_orgs.get(connection_id)

    def connection_org(self, connection_id: UUID) -> UUID | None:
        """The organisation of a connection (None: no such connection), remembered: it never changes."""
        org = self._connection_orgs.get(connection_id)
        if org is None:
            row = read_first(self._lookups, _CONNECTION_ORG, {"connection_id": connection_id})
            org = row[0] if row is not None else None
            if org is not None:
                if len(self._connection_orgs) >= CONNECTION_CACHE_SIZE:
                    self._connection_orgs.clear()
                self._connection_orgs[connection_id] = org
        return org

    def list(self, org_id: UUID | None = None, *, include_revoked: bool = False) -> list[ApiTokenRecord]:
        query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
        if org_id is not None:
            query = query.where(ApiToken.org_id == org_id)
        if not include_revoked:
            query = query.where(ApiToken.revoked_at.is_(None))
        with self._transaction() as session:
            return [ApiTokenRecord.model_validate(row) for row in session.scalars(query)]

    def revoke(self, token_id: UUID) -> ApiTokenRecord:
        """Revoke a token (idempotent: an already revoked one keeps its first revocation time)."""
        statement = (
            update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
            .returning(ApiToken)
            .execution_options(synchronize_session=False)
        )
        with self._transaction() as session:
            row = session.scalar(statement) or session.get(ApiToken, token_id)
            if row is None:
                raise TokenNotFoundError(f"API token {token_id} not found")
            return ApiTokenRecord.model_validate(row)

    def revoke_named(self, org_id: UUID, name: str) -> int:
        """Revoke every active token of the org with this name (the dev stack replaces its own)."""
        statement = (
            update(ApiToken)
            .where(ApiToken.org_id == org_id, ApiToken.name == name, ApiToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        with self._transaction() as session:
            return session.execute(statement).rowcount or 0


def _well_formed(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX) and len(token) <= 200
