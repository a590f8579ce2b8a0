"""The app factory of the HTTP API, and how it is served (uvicorn).

``create_app(settings)`` builds the FastAPI app; its lifespan opens the pools
(``deps.Resources``) and closes them. ``dropzone api`` serves it with uvicorn;
``dropzone dev`` and the demo run the same server inside their event loop
(``ApiServer``), next to the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema

from dropzone.errors import InvalidConfigError
from dropzone.settings import Settings
from starter.http import problems
from starter.http.body import BodyLimit
from starter.http.deps import SMALL_BODY_LIMIT, Resources
from starter.http.routers import drafts, exports, health

TITLE = "orderflow-dropzone API"
VERSION = "1"
DESCRIPTION = """\
Push approved draft orders to ERP dropzones and follow their exports, from a backend in any language.

Every call but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`; a token
(`dropzone tokens create --org ORG`) acts for one organisation, and another organisation's
ids answer 404. Errors are RFC 9457 problem details (`application/problem+json`).
"""


def _operation_id(route: APIRoute) -> str:
    # Stable, readable ids for generated clients: the function's name.
    return route.name


def create_app(settings: Settings, resources: Resources | None = None) -> FastAPI:
    """The app; its pools (``resources``, else built at startup) are closed at shutdown.

    Entry points build ``resources`` first: a bad setting is then one line from
    the CLI rather than a failed ASGI lifespan in uvicorn's log.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = resources or Resources.build(settings)
        try:
            yield
        finally:
            app.state.resources.close()

    app = FastAPI(
        title=TITLE, version=VERSION, description=DESCRIPTION, lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.include_router(drafts.router)
    app.include_router(exports.router)
    app.include_router(health.router)
    problems.install(app)
    push_limit = settings.api_max_body_bytes

    def limit_for(path: str) -> int:
        return push_limit if path.startswith("/draft-orders/") and path.endswith("/push") else SMALL_BODY_LIMIT

    # Added last, so it runs first: an oversized body is refused before any route reads it.
    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the bodies that routes read themselves (push streams its body)."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes,
        )
        _, extra = models_json_schema(
            [(model, "validation") for model in drafts.DOCUMENTED_MODELS], ref_template="#/components/schemas/{model}"
        )
        document.setdefault("components", {}).setdefault("schemas", {}).update(extra.get("$defs", {}))
        app.openapi_schema = document
    return app.openapi_schema


def openapi_json(settings: Settings | None = None) -> str:
    """The OpenAPI document as checked in (docs/openapi.json): sorted keys, 2-space indent."""
    app = create_app(settings or Settings())
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- serving ---------------------------------------------------------------------------


class ApiServer(uvicorn.Server):
    """uvicorn inside a running event loop: the host process keeps its own signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(settings: Settings, app: FastAPI, *, port: int | None = None, **extra: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port if port is None else port,
        # Our logging setup speaks for the process; uvicorn's own stays at warnings.
        log_config=None, log_level=logging.WARNING, access_log=False, server_header=False,
        proxy_headers=False, lifespan="on", **extra,
    )


@asynccontextmanager
async def serving(settings: Settings, *, port: int | None = None, app: FastAPI | None = None) -> AsyncIterator[str]:
    """Serve the API (or ``app``) in this event loop until the block ends; yields its base URL."""
    server = ApiServer(uvicorn_config(settings, app or create_app(settings, Resources.build(settings)), port=port))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            # uvicorn logs the cause and exits (SystemExit) when it cannot bind.
            with contextlib.suppress(SystemExit):
                task.result()
            where = f"{settings.api_host}:{settings.api_port if port is None else port}"
            raise InvalidConfigError(
                f"the HTTP API did not start on {where}: the port is taken (DROPZONE_API_HOST/DROPZONE_API_PORT) "
                "or its start failed (see the log)"
            )
        await asyncio.sleep(0.05)
    try:
        yield base_url(server)
    finally:
        server.should_exit = True
        await task


def base_url(server: uvicorn.Server) -> str:
    sockets = [s for srv in server.servers for s in srv.sockets]
    host, port = sockets[0].getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
