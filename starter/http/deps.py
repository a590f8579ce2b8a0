"""What the routes depend on: settings, ledger, Temporal client, object store, the caller.

Every dependency is ``async def``: FastAPI runs a plain ``def`` one in a worker
thread, and a push resolving a dozen of them paid a thread hop for each.

Built once per process in the app's lifespan (``Resources``) and handed to routes
through FastAPI dependencies, as in the FastAPI full-stack template's ``deps.py``.
The process keeps no state of its own besides these pools: run as many API
processes as needed, they share only PostgreSQL and Temporal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated
from uuid import UUID

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from dropzone.ledger import Ledger, create_ledger_engine
from dropzone.ledger.tokens import ApiTokenRecord, ApiTokens
from dropzone.object_store import ObjectStore
from dropzone.settings import Settings
from starter.http.problems import ProblemError

# Bodies of every route but push (retry reasons and the like) stay small.
SMALL_BODY_LIMIT = 64 * 1024


@dataclass
class Resources:
    settings: Settings
    ledger: Ledger
    store: ObjectStore
    tokens: ApiTokens
    _client: Client | None = None
    _connecting: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Resources:
        from worker import build_adapters

        adapters = build_adapters(settings)
        adapters.connectors.close()  # the API never opens a dropzone
        engine = adapters.ledger.engine
        lookups = create_ledger_engine(engine.url, pool_size=settings.database_pool_size, lookups=True)
        return cls(settings, adapters.ledger, adapters.store, ApiTokens(engine, lookups=lookups))

    async def client(self) -> Client:
        """Connected on first use, so the API starts (and /readyz answers) while Temporal is down."""
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    from worker import connect_client

                    self._client = await connect_client(self.settings)
        return self._client

    def close(self) -> None:
        self.store.close()
        self.tokens.dispose()
        self.ledger.dispose()


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


async def get_ledger(resources: ResourcesDep) -> Ledger:
    return resources.ledger


async def get_client(resources: ResourcesDep) -> Client:
    return await resources.client()


SettingsDep = Annotated[Settings, Depends(get_settings)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
ClientDep = Annotated[Client, Depends(get_client)]

# auto_error=False: a missing header gets our own 401 problem, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API token from `dropzone tokens create --org ORG`.")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "unauthorized", "Not authenticated", detail, headers={"WWW-Authenticate": 'Bearer realm="dropzone"'}
    )


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _token_value(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("send 'Authorization: Bearer <token>' (create one with 'dropzone tokens create --org ORG')")
    return credentials.credentials


def _revoked_or_unknown() -> ProblemError:
    return _unauthorized("the token is unknown or has been revoked")


async def current_token(resources: ResourcesDep, credentials: BearerDep) -> ApiTokenRecord:
    """The caller's token; 401 when it is missing, unknown or revoked (never saying which)."""
    token = await run_in_threadpool(resources.tokens.authenticate, _token_value(credentials))
    if token is None:
        raise _revoked_or_unknown()
    return token


CurrentToken = Annotated[ApiTokenRecord, Depends(current_token)]


@dataclass(frozen=True)
class DraftCaller:
    """The caller's token, and whose draft the path's id is (None: no export attempt has it yet)."""

    token: ApiTokenRecord
    draft_owner: UUID | None


async def draft_caller(request: Request, resources: ResourcesDep, credentials: BearerDep) -> DraftCaller:
    """``current_token`` for a route under ``/draft-orders/{draft_order_id}``: the token and the
    draft's owner come in one round trip. A path id that is not a UUID is answered 422 by the
    route's own parameter, after this."""
    value = _token_value(credentials)
    try:
        draft_order_id = UUID(request.path_params["draft_order_id"])
    except ValueError:
        token = await run_in_threadpool(resources.tokens.authenticate, value)
        if token is None:
            raise _revoked_or_unknown() from None
        return DraftCaller(token, None)
    found = await run_in_threadpool(resources.tokens.authenticate_for_draft, value, draft_order_id)
    if found is None:
        raise _revoked_or_unknown()
    return DraftCaller(*found)


DraftCallerDep = Annotated[DraftCaller, Depends(draft_caller)]
