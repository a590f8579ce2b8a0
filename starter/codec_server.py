"""The codec server: decrypts (and encrypts) payloads for the Temporal UI and CLI.

Temporal's remote codec protocol: ``POST /decode`` and ``POST /encode`` take and
return ``{"payloads": [{"metadata": {"<key>": "<base64>"}, "data": "<base64>"}]}``
(the protobuf JSON form of ``temporal.api.common.v1.Payloads``), which is what
the UI ("Codec Server" setting, ``--ui-codec-endpoint``) and
``temporal … --codec-endpoint URL --codec-auth TOKEN`` send. The keys never
leave this process: the browser or CLI sends ciphertext here and gets plain
JSON back.

Guards: CORS admits only the configured UI origins (``DROPZONE_CODEC_CORS_ORIGINS``);
with ``DROPZONE_CODEC_AUTH_TOKEN`` set, every request needs
``Authorization: <token>`` or ``Authorization: Bearer <token>`` (401
otherwise); ``check_bind`` refuses any non-loopback address without a token.
Errors are problem responses (RFC 9457), never a 500 for bad input or an
unknown key id.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from dropzone.errors import InvalidConfigError, PayloadKeyError
from dropzone.settings import Settings
from starter.codec import EncryptionCodec, build_codec

PROBLEM_JSON = "application/problem+json"
# What the UI and the CLI send besides the body.
ALLOWED_HEADERS = ["authorization", "content-type", "x-namespace"]
MAX_BODY_BYTES = 8 * 1024 * 1024  # a history page of 2 MB payloads, base64'd, with room

Transform = Callable[[Iterable[Payload]], Awaitable[list[Payload]]]


def problem(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status, media_type=PROBLEM_JSON, headers=headers,
    )


def cors_origins(settings: Settings) -> list[str]:
    return [origin.strip().rstrip("/") for origin in settings.codec_cors_origins.split(",") if origin.strip()]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, settings: Settings) -> None:
    """Plaintext order data must not be served to the network without a token."""
    token = settings.codec_auth_token.get_secret_value() if settings.codec_auth_token else ""
    if not is_loopback(host) and not token:
        raise InvalidConfigError(
            f"the codec server refuses to listen on {host} without DROPZONE_CODEC_AUTH_TOKEN "
            "(it returns decrypted order data); set a token or bind to 127.0.0.1"
        )


def _authorized(header: str | None, token: str) -> bool:
    if not header:
        return False
    presented = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else header.strip()
    return hmac.compare_digest(presented.encode(), token.encode())


def build_app(codec: EncryptionCodec, *, origins: list[str], token: str | None) -> FastAPI:
    app = FastAPI(title="dropzone codec server", docs_url=None, redoc_url=None, openapi_url=None)

    async def apply(request: Request, transform: Transform) -> Response:
        if token and not _authorized(request.headers.get("authorization"), token):
            return problem(401, "Unauthorized", "missing or wrong Authorization token",
                           headers={"WWW-Authenticate": "Bearer"})
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return problem(413, "Payload Too Large", f"request body over {MAX_BODY_BYTES} bytes")
        try:
            payloads = json_format.Parse(body or b"{}", Payloads())
        except json_format.ParseError as exc:
            return problem(400, "Bad Request", f"body is not {{\"payloads\": [...]}} in Temporal's JSON form: {exc}")
        try:
            result = Payloads(payloads=await transform(payloads.payloads))
        except PayloadKeyError as exc:
            return problem(422, "Payload Key Unavailable", exc.message)
        return Response(json_format.MessageToJson(result), media_type="application/json")

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        return await apply(request, codec.decode)

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        return await apply(request, codec.encode)

    # Outermost: a preflight is answered (or refused, 400) before any token check,
    # and error responses carry the CORS headers the browser needs to read them.
    app.add_middleware(
        CORSMiddleware, allow_origins=origins, allow_methods=["POST"], allow_headers=ALLOWED_HEADERS,
        allow_credentials=False, max_age=600,
    )
    return app


def app_from_settings(settings: Settings) -> FastAPI:
    token = settings.codec_auth_token.get_secret_value() if settings.codec_auth_token else None
    return build_app(build_codec(settings), origins=cors_origins(settings), token=token or None)


async def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM (uvicorn's own handlers)."""
    import socket

    import uvicorn

    check_bind(host, settings)
    app = app_from_settings(settings)  # bad keys fail here, before the port opens
    # Bound here, so that a port in use is one line of ours, not uvicorn's exit.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InvalidConfigError(
            f"the codec server cannot listen on {host}:{port} ({exc.strerror}; "
            "DROPZONE_CODEC_HOST/DROPZONE_CODEC_PORT or --host/--port)"
        ) from None
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, date_header=False)
    await uvicorn.Server(config).serve(sockets=[sock])
