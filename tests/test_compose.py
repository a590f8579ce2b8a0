"""docker-compose.yml and the Dockerfiles, checked for consistent wiring.

No Docker engine runs on the development machines, so the stack itself is not
started here; these tests check what can be checked without one: pinned images,
loopback-only ports, dependency conditions that can be met, environment names
the application really reads, build inputs that exist, commands that exist,
and an sshd configuration that sshd itself accepts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from dropzone.settings import Settings
from starter.cli import app

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}")
ONE_SHOTS = {name for name, svc in SERVICES.items() if str(svc.get("restart", "")) == "no"}
APP_SERVICES = {name for name, svc in SERVICES.items() if svc.get("build") == "."}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def resolve(value: str) -> str:
    """``${NAME:-default}`` → default (or NAME when there is none): enough to read hosts and ports."""
    return VARIABLE.sub(lambda m: _default(m.group(0)) or m.group(1), value)


def _default(expression: str) -> str | None:
    match = re.match(r"\$\{[^:}]+:-([^}]*)\}", expression)
    return match.group(1) if match else None


def test_every_component_is_there() -> None:
    assert {"postgresql", "temporal", "temporal-ui", "minio", "sftp", "migrate", "worker"} <= set(SERVICES)
    assert SERVICES["temporal"]["environment"]["DB"].startswith("postgres")  # PostgreSQL persistence
    assert SERVICES["temporal"]["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert {"migrate", "temporal-setup"} <= ONE_SHOTS


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name: str) -> None:
    image = SERVICES[name].get("image")
    if image is None:
        assert "build" in SERVICES[name], f"{name} has neither image nor build"
        return
    repository, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
    assert repository and tag and tag != "latest", f"{name}: image {image!r} is not pinned to a version"
    assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_published_ports_are_bound_to_loopback(name: str) -> None:
    for mapping in SERVICES[name].get("ports", []):
        assert isinstance(mapping, str) and mapping.startswith("127.0.0.1:"), f"{name}: {mapping!r}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependency_conditions_can_be_met(name: str) -> None:
    depends = SERVICES[name].get("depends_on", {})
    if isinstance(depends, list):
        depends = {dep: {"condition": "service_started"} for dep in depends}
    for dep, spec in depends.items():
        assert dep in SERVICES, f"{name} depends on unknown service {dep}"
        condition = spec.get("condition", "service_started")
        if condition == "service_healthy":
            assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
        elif condition == "service_completed_successfully":
            assert dep in ONE_SHOTS, f"{name} waits for {dep} to complete, which restarts"
        else:
            assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_long_running_services_have_health_checks() -> None:
    for name, service in SERVICES.items():
        if name not in ONE_SHOTS:
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_the_worker_starts_only_after_schema_search_attributes_and_storage() -> None:
    depends = SERVICES["worker"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["temporal-setup"]["condition"] == "service_completed_successfully"
    assert depends["minio"]["condition"] == "service_healthy"
    assert SERVICES["temporal-setup"]["depends_on"]["temporal"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgresql"]["condition"] == "service_healthy"
    for name in ("OrgId", "DraftOrderId", "ExportStatus"):
        assert name in " ".join(SERVICES["temporal-setup"]["command"])


def test_every_dropzone_variable_is_a_setting_the_application_reads() -> None:
    fields = {f"DROPZONE_{name.upper()}" for name in Settings.model_fields}
    used = {key for svc in SERVICES.values() for key in environment(svc) if key.startswith("DROPZONE_")}
    assert used, "no DROPZONE_* variable at all"
    assert used <= fields, f"not read by dropzone/settings.py: {sorted(used - fields)}"
    required = {"DROPZONE_TEMPORAL_ADDRESS", "DROPZONE_DATABASE_URL", "DROPZONE_S3_ENDPOINT_URL",
                "DROPZONE_S3_ACCESS_KEY", "DROPZONE_S3_SECRET_KEY", "DROPZONE_CONFIG_KEYS"}
    for name in APP_SERVICES:
        assert required <= set(environment(SERVICES[name])), name


def test_addresses_point_at_the_services_that_serve_them() -> None:
    env = {k: resolve(v) for k, v in environment(SERVICES["worker"]).items()}
    host, port = env["DROPZONE_TEMPORAL_ADDRESS"].split(":")
    assert host == "temporal" and port == "7233"
    db = urlsplit(env["DROPZONE_DATABASE_URL"])
    assert db.scheme == "postgresql+psycopg" and db.hostname == "postgresql" and db.port == 5432
    assert db.path.lstrip("/") == resolve(SERVICES["postgresql"]["environment"]["POSTGRES_DB"])
    assert db.username == resolve(SERVICES["postgresql"]["environment"]["POSTGRES_USER"])
    s3 = urlsplit(env["DROPZONE_S3_ENDPOINT_URL"])
    assert s3.hostname == "minio" and s3.port == 9000 and "/data" in SERVICES["minio"]["command"]
    # The credentials the worker signs with are the ones MinIO is started with.
    minio = environment(SERVICES["minio"])
    raw = environment(SERVICES["worker"])
    assert VARIABLE.search(raw["DROPZONE_S3_ACCESS_KEY"]).group(1) == VARIABLE.search(minio["MINIO_ROOT_USER"]).group(1)  # type: ignore[union-attr]
    assert VARIABLE.search(raw["DROPZONE_S3_SECRET_KEY"]).group(1) == VARIABLE.search(minio["MINIO_ROOT_PASSWORD"]).group(1)  # type: ignore[union-attr]
    assert SERVICES["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    # The metrics endpoint the health check reads is the one the worker serves.
    assert f":{env['DROPZONE_METRICS_PORT']}/metrics" in " ".join(SERVICES["worker"]["healthcheck"]["test"])


def test_every_variable_is_explained_in_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = set(VARIABLE.findall(text))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (REPO / ".env.example").read_text(), re.MULTILINE))
    assert used <= documented, f"missing from .env.example: {sorted(used - documented)}"
    assert documented <= used, f"in .env.example but not used: {sorted(documented - used)}"


def test_commands_exist() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in APP_SERVICES:
        command = SERVICES[name]["command"]
        assert command[0] in scripts, f"{name}: {command[0]} is not a console script of the package"
        if scripts[command[0]] == "starter.cli:main":
            assert command[1] in commands, f"{name}: 'dropzone {command[1]}' does not exist"
    assert SERVICES["worker"]["command"] == ["dropzone-worker"] and scripts["dropzone-worker"] == "worker:main"


def build_contexts() -> list[tuple[str, Path]]:
    contexts = []
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            contexts.append((name, REPO / context / dockerfile))
    return contexts


@pytest.mark.parametrize(("name", "dockerfile"), build_contexts())
def test_dockerfile_copy_sources_exist(name: str, dockerfile: Path) -> None:
    assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
    ignored = _dockerignore(dockerfile.parent)
    base = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    assert base is not None and ":" in base.group(1) and not base.group(1).endswith(":latest")
    copies = re.findall(r"^(?:COPY|ADD)\s+(?!--from)(.+)$", dockerfile.read_text(), re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _destination = [part for part in line.split() if not part.startswith("--")]
        for source in sources:
            assert (dockerfile.parent / source).exists(), f"{name}: COPY source {source} does not exist"
            assert source.rstrip("/") not in ignored, f"{name}: COPY source {source} is excluded by .dockerignore"


def _dockerignore(context: Path) -> set[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return set()
    return {line.strip().rstrip("/") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def test_the_image_installs_every_package_the_worker_imports() -> None:
    text = (REPO / "Dockerfile").read_text()
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in (p.rstrip("*") for p in found):
        assert re.search(rf"^COPY\s+{package}\s", text, re.MULTILINE), f"the Dockerfile does not copy {package}/"
    assert re.search(r"^COPY\s.*\bworker\.py\b", text, re.MULTILINE)
    assert re.search(r"^USER\s+(?!root)\S+", text, re.MULTILINE), "the worker must not run as root"


def test_the_sftp_server_configuration_is_accepted_by_sshd(tmp_path: Path) -> None:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        pytest.fail("sshd not found: apt-get install -y openssh-server (the SFTP tests need it too)", pytrace=False)
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = (REPO / "deploy" / "sftp" / "sshd_config").read_text()
    assert "Subsystem sftp internal-sftp" in config and "ChrootDirectory" in config
    config = config.replace("/etc/ssh/keys/ssh_host_ed25519_key", str(key))
    (tmp_path / "sshd_config").write_text(config)
    checked = subprocess.run([sshd, "-t", "-f", str(tmp_path / "sshd_config")], check=False, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    entrypoint = REPO / "deploy" / "sftp" / "entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(entrypoint)], check=False).returncode == 0
    assert entrypoint.stat().st_mode & 0o111
