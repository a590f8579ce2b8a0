"""Status callbacks: signing (against the ``standardwebhooks`` library), the connection's
``webhook_url``/``webhook_secret`` fields, and `dropzone connections add/update` with them
(real CLI commands against the test PostgreSQL)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dropzone.connection_config import config_to_storable, parse_connection_config, redacted
from dropzone.errors import InvalidConfigError
from dropzone.webhooks import WebhookEvent, describe_url, new_secret, sign, signed_headers


def event(**changes: object) -> WebhookEvent:
    base = dict(
        event_id=uuid.uuid4(), type="export.acked", draft_order_id=uuid.uuid4(), export_id=uuid.uuid4(),
        attempt=1, status="ACKED", erp_order_id="SO-Ü-1", error=None, occurred_at=datetime.now(UTC),
    )
    return WebhookEvent(**{**base, **changes})  # type: ignore[arg-type]


def test_signature_is_the_standard_webhooks_one():
    secret = new_secret()
    body = event().body()
    timestamp = int(time.time())
    ours = sign(secret, "msg_1", timestamp, body)
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(timestamp, UTC), body.decode())
    assert ours == theirs


def test_signed_headers_verify_with_the_library_and_tampering_does_not():
    secret = new_secret()
    ev = event()
    body = ev.body()
    headers = signed_headers(secret, ev, body, int(time.time()))
    assert headers["webhook-id"] == str(ev.event_id) and headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers)["erp_order_id"] == "SO-Ü-1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"ACKED", b"FAILED"), headers)
    old = signed_headers(secret, ev, body, int(time.time()) - 3600)  # a replayed old request
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, old)


def test_body_is_compact_json_with_every_field():
    ev = event(status="FAILED", type="export.failed", erp_order_id=None, error={"code": "ACK_TIMEOUT", "message": "m"})
    data = json.loads(ev.body())
    assert set(data) == {
        "event_id", "type", "draft_order_id", "export_id", "attempt", "status", "erp_order_id", "error", "occurred_at",
    }
    assert data["error"] == {"code": "ACK_TIMEOUT", "message": "m"} and b" " not in ev.body()


FS = {"mode": "filesystem", "export_path": "/srv/erp/in"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"webhook_url": "ftp://backend/hook", "webhook_secret": new_secret()}, "webhook_url: must be an http:// or https:// URL"),
        ({"webhook_url": "https://backend/h ook", "webhook_secret": new_secret()}, "webhook_url: must not contain spaces"),
        ({"webhook_url": "https://backend/hook"}, "webhook_url and webhook_secret go together"),
        ({"webhook_secret": new_secret()}, "webhook_url and webhook_secret go together"),
        ({"webhook_url": "https://b/h", "webhook_secret": "hunter2-not-whsec"}, "webhook_secret: must start with 'whsec_'"),
        ({"webhook_url": "https://b/h", "webhook_secret": "whsec_%%%%"}, "webhook_secret: the part after 'whsec_' is not valid base64"),
        ({"webhook_url": "https://b/h", "webhook_secret": "whsec_c2hvcnQ="}, "webhook_secret: must decode to 24 to 64 bytes"),
    ],
)
def test_bad_webhook_fields_are_named_and_never_quoted(fields, message):
    with pytest.raises(InvalidConfigError) as info:
        parse_connection_config({**FS, **fields})
    assert message in info.value.message
    for value in fields.values():
        assert value not in info.value.message


def test_the_secret_is_stored_but_never_shown():
    secret = new_secret()
    config = parse_connection_config({**FS, "webhook_url": "https://backend.example/h?token=t1", "webhook_secret": secret})
    assert config_to_storable(config)["webhook_secret"] == secret
    assert redacted(config)["webhook_secret"] == "***" and redacted(config)["webhook_url"].endswith("?token=t1")
    assert secret not in repr(config) + str(config) + config.model_dump_json()
    assert describe_url(config.webhook_url) == "https://backend.example/h"  # type: ignore[arg-type]


@pytest.mark.asyncio(loop_scope="session")
async def test_connections_add_and_update_take_a_webhook(dropzone_cli_in_process, ledger, tmp_path):
    secret = new_secret()
    secret_file = tmp_path / "whsec.txt"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    org = str(uuid.uuid4())
    added = await dropzone_cli_in_process(
        "connections", "add", "--org", org, "--mode", "filesystem", "--export-path", str(tmp_path),
        "--webhook-url", "https://backend.example/hooks/erp", "--webhook-secret-file", str(secret_file), "--json",
    )
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    assert shown["config"]["webhook_secret"] == "***" and secret not in added.stdout + added.stderr
    stored = ledger.get_connection(uuid.UUID(shown["id"])).config
    assert stored["webhook_url"] == "https://backend.example/hooks/erp" and stored["webhook_secret"] == secret

    other = new_secret()
    secret_file.write_text(other)
    updated = await dropzone_cli_in_process(
        "connections", "update", shown["id"], "--webhook-url", "http://127.0.0.1:9/h", "--webhook-secret-file", str(secret_file),
    )
    assert updated.returncode == 0, updated.stderr
    stored = ledger.get_connection(uuid.UUID(shown["id"])).config
    assert stored["webhook_url"] == "http://127.0.0.1:9/h" and stored["webhook_secret"] == other

    secret_file.chmod(0o644)  # readable by others: refused, nothing changed
    refused = await dropzone_cli_in_process("connections", "update", shown["id"], "--webhook-secret-file", str(secret_file))
    assert refused.returncode != 0 and "webhook secret file" in refused.stderr and "chmod 600" in refused.stderr
    secret_file.chmod(0o600)
    secret_file.write_text("not-a-whsec-secret")
    bad = await dropzone_cli_in_process("connections", "update", shown["id"], "--webhook-secret-file", str(secret_file))
    assert bad.returncode != 0 and "webhook_secret: must start with 'whsec_'" in bad.stderr
    assert "not-a-whsec-secret" not in bad.stderr + bad.stdout and "Traceback" not in bad.stderr
    assert ledger.get_connection(uuid.UUID(shown["id"])).config["webhook_secret"] == other
