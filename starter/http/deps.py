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

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from dropzone.ledger import Ledger
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
        return cls(settings, adapters.ledger, adapters.store, ApiTokens(adapters.ledger.engine))

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
        self.ledger.dispose()


async def get_resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


async def get_ledger(resources: ResourcesDep) -> Ledger:
    return resources.ledger


async def get_store(resources: ResourcesDep) -> ObjectStore:
    return resources.store


async def get_tokens(resources: ResourcesDep) -> ApiTokens:
    return resources.tokens


async def get_client(resources: ResourcesDep) -> Client:
    return await resources.client()


SettingsDep = Annotated[Settings, Depends(get_settings)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
ClientDep = Annotated[Client, Depends(get_client)]
TokensDep = Annotated[ApiTokens, Depends(get_tokens)]

# auto_error=False: a missing header gets our own 401 problem, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API token from `dropzone tokens create --org ORG`.")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "unauthorized", "Not authenticated", detail, headers={"WWW-Authenticate": 'Bearer realm="dropzone"'}
    )


async def current_token(
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiTokenRecord:
    """The caller's token; 401 when it is missing, unknown or revoked (never saying which)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("send 'Authorization: Bearer <token>' (create one with 'dropzone tokens create --org ORG')")
    token = await run_in_threadpool(resources.tokens.authenticate, credentials.credentials)
    if token is None:
        raise _unauthorized("the token is unknown or has been revoked")
    return token


CurrentToken = Annotated[ApiTokenRecord, Depends(current_token)]
