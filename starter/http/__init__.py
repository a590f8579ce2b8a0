"""The HTTP API (`dropzone api`): push drafts and follow exports from a backend in any language.

Laid out like the FastAPI full-stack template's backend: ``app.py`` (the app
factory and serving), ``deps.py`` (what routes depend on), ``routers/`` (one
module per resource), ``problems.py`` (every error as RFC 9457 problem details),
``body.py`` (body limits and the streamed push body), ``schemas.py`` (bodies).
"""

from starter.http.app import create_app, openapi_json, serving

__all__ = ["create_app", "openapi_json", "serving"]
