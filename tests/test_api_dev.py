"""`dropzone dev` serves the HTTP API and prints its URL and a token; the README's `curl` block
(section "HTTP API") then pushes the sample draft, reads its status, is told 409 for a retry that
makes no sense, and lists exports: a backend holding only curl and a token. The ERP simulator of
the dev stack answers, so the order ends ACKED with the ERP's order number."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx

from starter.devstack import free_ports
from tests.helpers import eventually_sync
from tests.test_devstack import REPO, _no_leftovers, clean_env, dropzone_dev, wait_without_survivors  # noqa: F401

CURL_HINT = "install curl: apt-get install -y curl"
DEADLINE = 90.0


def readme_curl_block() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(# http-api-curl.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) == 1, "README.md must have one ```sh block starting with '# http-api-curl'"
    return blocks[0]


def run_block(block: str, env: dict[str, str]) -> list[str]:
    """The block in bash, each curl's output on a line of its own."""
    script = block.replace("curl -sS", "curl -sS -w '\\n'")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


def test_dev_serves_the_api_and_the_readme_curl_block_works(tmp_path: Path) -> None:
    assert shutil.which("curl"), CURL_HINT
    data_dir = tmp_path / "stack"
    with dropzone_dev(data_dir, free_ports(3), tmp_path) as dev:
        dev.wait_for("worker polling")
        api = dev.field("HTTP API")
        token = dev.field("API token")
        connection_id = dev.field("connection")
        assert api.startswith("http://127.0.0.1:") and token.startswith("dzt_")
        env = clean_env(API=api, TOKEN=token, CONNECTION_ID=connection_id)

        pushed, status, retry, listed = (json.loads(line) for line in run_block(readme_curl_block(), env))
        assert pushed["workflow_id"] == "erp-export-550e8400-e29b-41d4-a716-446655440000", pushed
        assert pushed["status_url"] == f"{api}/draft-orders/550e8400-e29b-41d4-a716-446655440000/exports"
        # Right after the push the first attempt may not be opened yet: 404 until it is.
        assert status.get("status") == 404 or status["attempts"][0]["attempt"] == 1, status
        # Not FAILED (pending, sent or already ACKED): the retry is refused, saying why.
        assert retry["status"] == 409 and retry["type"].endswith(":retry-refused") and retry["detail"], retry
        assert "exports" in listed and listed["filters"]["status"] == "FAILED", listed

        headers = {"Authorization": f"Bearer {token}"}

        def acked() -> list[dict] | None:  # type: ignore[type-arg]
            response = httpx.get(pushed["status_url"], headers=headers, timeout=10)
            attempts = response.json().get("attempts", []) if response.status_code == 200 else []
            return attempts if attempts and attempts[-1]["status"] == "ACKED" else None

        attempts = eventually_sync(acked, timeout=DEADLINE, every=0.3, what="the pushed export ACKED")
        assert attempts and attempts[-1]["status"] == "ACKED" and attempts[-1]["erp_order_id"], attempts
        dev.wait_for(f"ERP simulator: ACKED  {attempts[-1]['filename']}")
        assert dev.interrupt() == 0, dev.output()
    assert wait_without_survivors(data_dir) == []
