"""The one settings class, read from ``DROPZONE_*`` environment variables.

Built only in entrypoints (worker, CLI, dev stack) and handed down as plain
values; nothing below the entrypoints reads the environment. The embedded dev
stack writes its addresses to ``.dropzone/dropzone.env`` so that CLI commands in
another terminal find it; real environment variables always win over that file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dropzone.draft_files import MAX_DRAFT_BYTES
from dropzone.errors import InvalidConfigError
from dropzone.secret_files import require_owner_only

DEFAULT_ENV_FILE = ".dropzone/dropzone.env"
# The task queue workers serve and exports start on (DROPZONE_TASK_QUEUE); named only here.
DEFAULT_TASK_QUEUE = "erp-exports"


def _env_file() -> str:
    return os.environ.get("DROPZONE_ENV_FILE", DEFAULT_ENV_FILE)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DROPZONE_", extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = DEFAULT_TASK_QUEUE
    temporal_ui_url: str | None = None
    # A secured Temporal (dropzone/temporal_connection.py): TLS is on when any of
    # these is set, or with DROPZONE_TEMPORAL_TLS=true (the system's CAs, as for
    # Temporal Cloud). Files, so that no secret is ever a process argument.
    temporal_tls: bool | None = None
    temporal_tls_ca_file: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    temporal_api_key: SecretStr | None = None
    temporal_api_key_file: Path | None = None

    database_url: SecretStr | None = None
    database_pool_size: int = Field(default=10, ge=1, le=200)

    s3_endpoint_url: str | None = None
    s3_bucket: str = "orderflow-exports"
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    # Empty keys are refused unless this is chosen: then boto3's own chain signs
    # (instance role, AWS_* variables, ~/.aws) — the right thing on AWS.
    s3_use_ambient_credentials: bool = False

    # Comma-separated Fernet keys: the first encrypts, all decrypt (rotation).
    config_keys: SecretStr | None = None
    # Set only by the embedded dev stack; production refuses to run without keys.
    dev_stack: bool = False

    # Temporal payload encryption (starter/codec.py): comma-separated ``key_id:base64(32 bytes)``;
    # the first encrypts, all decrypt (rotation). Everything that talks to Temporal needs it.
    payload_keys: SecretStr | None = None
    # `dropzone codec-server`: decrypts payloads for the Temporal UI and CLI. Loopback unless a
    # token is set; CORS admits only these comma-separated origins (the UI's, e.g. http://127.0.0.1:8233).
    codec_host: str = "127.0.0.1"
    codec_port: int = Field(default=8081, ge=1, le=65535)
    codec_cors_origins: str = ""
    codec_auth_token: SecretStr | None = None

    max_concurrent_activities: int = Field(default=32, ge=1, le=1000)
    # Drafts whose JSON is larger go to object storage and travel as a reference.
    inline_draft_limit_bytes: int = Field(default=256 * 1024, ge=1024, le=1_500_000)
    # The largest draft `dropzone export` and start_export take (checked before reading);
    # more than the worker's own draft_ref limit could never be exported.
    max_draft_bytes: int = Field(default=MAX_DRAFT_BYTES, ge=1024, le=MAX_DRAFT_BYTES)

    # Prometheus /metrics of the worker (Temporal SDK metrics and ours); 0 = off.
    # Loopback by default: metrics name orgs and queues, keep them off the network
    # unless asked (DROPZONE_METRICS_HOST=0.0.0.0 in a container).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # The HTTP API (`dropzone api`): loopback unless asked, like metrics. A push
    # body (the draft inside) is spooled to disk past a few MiB, never held whole;
    # larger bodies get 413.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_max_body_bytes: int = Field(default=1024**3, ge=1024)

    # DEBUG also lets paramiko and botocore speak (they stay at WARNING otherwise).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto = console lines on a terminal, JSON lines otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator(
        "temporal_tls", "temporal_tls_ca_file", "temporal_tls_server_name", "temporal_tls_cert_file",
        "temporal_tls_key_file", "temporal_api_key", "temporal_api_key_file", mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # The compose file passes every variable, unset ones as "".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_port_is_off(cls, value: object) -> object:
        return 0 if value in ("", None) else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _normalise_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        upper = value.strip().upper()
        if upper == "WARN":
            return "WARNING"
        return upper if upper in ("DEBUG", "INFO", "WARNING", "ERROR") else value.strip().lower()

    @field_validator("temporal_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if ":" not in value:
            raise ValueError("expected host:port")
        return value

    def config_key_list(self) -> list[str]:
        if self.config_keys is None:
            return []
        return [k.strip() for k in self.config_keys.get_secret_value().split(",") if k.strip()]

    def require_database_url(self) -> str:
        if self.database_url is None or not self.database_url.get_secret_value():
            raise InvalidConfigError(
                "DROPZONE_DATABASE_URL is not set (start the embedded stack with "
                "'dropzone dev' or point it at PostgreSQL)"
            )
        return self.database_url.get_secret_value()

    def require_s3(self) -> str:
        if not self.s3_endpoint_url:
            raise InvalidConfigError("DROPZONE_S3_ENDPOINT_URL is not set")
        return self.s3_endpoint_url

    def s3_credentials(self) -> tuple[str, str] | None:
        """(access key, secret key), or None for the machine's AWS credentials when chosen."""
        access, secret = self.s3_access_key.get_secret_value(), self.s3_secret_key.get_secret_value()
        if self.s3_use_ambient_credentials:
            if access or secret:
                raise InvalidConfigError(
                    "DROPZONE_S3_USE_AMBIENT_CREDENTIALS=true and DROPZONE_S3_ACCESS_KEY/DROPZONE_S3_SECRET_KEY "
                    "are both set: choose one"
                )
            return None
        missing = [name for name, value in (("DROPZONE_S3_ACCESS_KEY", access), ("DROPZONE_S3_SECRET_KEY", secret))
                   if not value]
        if missing:
            raise InvalidConfigError(
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set (or set "
                "DROPZONE_S3_USE_AMBIENT_CREDENTIALS=true to use the machine's AWS credentials)"
            )
        return access, secret

    def metrics_bind_address(self) -> str | None:
        """host:port for the worker's /metrics endpoint, or None when metrics are off."""
        if not self.metrics_port:
            return None
        host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
        return f"{host}:{self.metrics_port}"

    def database_label(self) -> str:
        """host:port/dbname of the database, safe to print."""
        if self.database_url is None:
            return "(not configured)"
        parts = urlsplit(self.database_url.get_secret_value())
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def invalid_settings_message(exc: ValidationError) -> str:
    """One line naming every setting that failed validation, never its value."""
    names = ", ".join(".".join(str(p) for p in e["loc"]) or "(value)" for e in exc.errors())
    return f"invalid settings: {names}"


def load_settings(**overrides: object) -> Settings:
    """Environment first, then the dev stack's env file if it exists."""
    env_file = Path(_env_file())
    if env_file.is_file():
        # It may hold the database password and DROPZONE_CONFIG_KEYS.
        require_owner_only(env_file, "env file (DROPZONE_ENV_FILE)")
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    return Settings(**overrides)  # type: ignore[arg-type]
