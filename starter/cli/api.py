"""`dropzone api`: serve the HTTP API (FastAPI on uvicorn) until SIGTERM / Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

from dropzone.settings import load_settings
from starter.cli.common import app, fail, handle_errors, out


@app.command("api")
@handle_errors
def api_cmd(
    host: str | None = typer.Option(None, "--host", help="Listen address (default DROPZONE_API_HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default DROPZONE_API_PORT, 8000)."),
    write_openapi: Path | None = typer.Option(
        None, "--write-openapi", help="Write the OpenAPI document to this file and exit (docs/openapi.json)."
    ),
) -> None:
    """Serve the HTTP API: push drafts, retry, status, lists (tokens: `dropzone tokens create`)."""
    from starter.http import create_app, openapi_json
    from starter.http.app import ApiServer, port_is_free, uvicorn_config
    from starter.http.deps import Resources

    if write_openapi is not None:
        write_openapi.write_text(openapi_json(), encoding="utf-8")
        out.print(f"wrote {write_openapi}", highlight=False)
        return
    from worker import setup_logging

    overrides = {k: v for k, v in (("api_host", host), ("api_port", port)) if v is not None}
    settings = load_settings(**overrides)
    setup_logging(settings)
    if not port_is_free(settings.api_host, settings.api_port):
        raise fail(f"port {settings.api_port} on {settings.api_host} is already in use (--port or DROPZONE_API_PORT)")
    url = f"http://{settings.api_host}:{settings.api_port}"
    app_ = create_app(settings, Resources.build(settings))  # a bad setting fails here, in one line
    config = uvicorn_config(settings, app_)
    config.load()  # resolves uvicorn's "auto" HTTP parser: httptools where it is installed

    async def serve() -> None:
        server = ApiServer(config)
        loop = asyncio.get_running_loop()
        # SIGTERM (a deploy) and Ctrl-C: finish the requests in flight, then exit 0.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, setattr, server, "should_exit", True)
        # What serves, as the operator's log should say (uvloop and httptools: benchmarks/bench_api.py).
        serving_with = {"event_loop": type(loop).__module__, "http": config.http_protocol_class.__module__}
        logging.getLogger("dropzone.api").info("api listening", extra={"url": url, **serving_with})
        await server.serve()

    out.print(f"HTTP API on {url} (docs: {url}/docs); Ctrl-C stops it", highlight=False)
    # uvicorn's "auto" loop, as `uvicorn` itself would run it: uvloop where it installs, else asyncio's.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
    logging.getLogger("dropzone.api").info("api stopped")
