"""`dropzone codec-server` and `dropzone payload-keygen`: payload encryption for operators."""

from __future__ import annotations

import typer

from dropzone.settings import load_settings
from starter.cli.common import app, handle_errors, out, run


@app.command("codec-server")
@handle_errors
def codec_server_cmd(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default DROPZONE_CODEC_HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default DROPZONE_CODEC_PORT, 8081)."),
) -> None:
    """Serve /encode and /decode for the Temporal UI and `temporal --codec-endpoint` (Ctrl-C stops)."""
    from starter.codec_server import check_bind, cors_origins, serve

    settings = load_settings()
    host = host or settings.codec_host
    port = port or settings.codec_port
    check_bind(host, settings)
    shown = f"[{host}]" if ":" in host else host
    origins = ", ".join(cors_origins(settings)) or "none (DROPZONE_CODEC_CORS_ORIGINS): CLI only"
    auth = "required" if settings.codec_auth_token else "off (loopback only)"
    out.print(f"codec server on http://{shown}:{port} (browser origins: {origins}; token: {auth})", highlight=False)
    run(serve(settings, host=host, port=port))


@app.command("payload-keygen")
@handle_errors
def payload_keygen_cmd(
    key_id: str | None = typer.Option(None, "--key-id", help="Id stored in each payload's metadata (default: random)."),
) -> None:
    """Print a new key_id:base64key entry for DROPZONE_PAYLOAD_KEYS."""
    from starter.codec import generate_key

    print(generate_key(key_id))
