"""SFTP host keys for `dropzone connections test`: show the server's key, pin only an approved one.

``--trust SHA256:…`` names the fingerprint the operator checked with the
server's operator. The key is fetched without authenticating and pinned only
when its fingerprint is that one: a man in the middle who appears between the
operator's first look and the ``--trust`` run presents another key, gets
nothing pinned and never sees a credential (the probe that follows logs in only
against the pin). An existing, different pin is replaced only with
``--replace-pin``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from dropzone.connection_config import SftpConfig, config_to_storable, validate_host_key_pin
from dropzone.errors import InvalidConfigError
from starter.cli.common import fail, out, print_json

TRUST_HINT = "--trust SHA256:… (the fingerprint the server's operator confirmed)"


def known_hosts_line(host: str, port: int, public_line: str) -> str:
    """``host key-type base64`` as in ~/.ssh/known_hosts; ``[host]:port`` when the port is not 22."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {public_line}"


def approved_fingerprint(trust: str | None, replace_pin: bool) -> str | None:
    """The ``--trust`` value as a normalised fingerprint; checked before anything is contacted."""
    if trust is None:
        if replace_pin:
            raise InvalidConfigError(f"--replace-pin needs {TRUST_HINT}")
        return None
    text = trust.strip()
    try:
        if not text.startswith("SHA256:"):
            raise ValueError
        return validate_host_key_pin(text)
    except ValueError:
        raise InvalidConfigError(
            "--trust takes the fingerprint you approved, 'SHA256:<43 base64 characters>' "
            "as 'dropzone connections test ID' shows it"
        ) from None


def _fingerprint_of_line(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def pin_fingerprint(pin: str) -> str:
    return pin.rstrip("=") if pin.startswith("SHA256:") else _fingerprint_of_line(pin)


def show_and_pin_host_key(
    ledger: Any,
    cid: Any,
    config: SftpConfig,
    approved: str | None,
    replace_pin: bool,
    report: dict[str, Any],
    json_output: bool,
    fetch_host_key: Any,
) -> SftpConfig:
    """Print the server's key; pin it if it is the approved one; refuse to go on without a pin."""
    key_type, fingerprint, public_line = fetch_host_key(
        config.host, config.port, config.connect_timeout_seconds, legacy_algorithms=tuple(config.legacy_algorithms)
    )
    line = known_hosts_line(config.host, config.port, public_line)
    pinned = pin_fingerprint(config.host_key) if config.host_key else None
    report["host_key"] = {"type": key_type, "fingerprint": fingerprint, "known_hosts": line}
    report["pinned_fingerprint"] = pinned
    if not json_output:
        out.print(f"host key of {config.host}:{config.port}: {key_type} {fingerprint}", highlight=False)
        out.print(f"known_hosts: {line}", highlight=False)
        if pinned is not None and pinned != fingerprint:
            # A fingerprint pin may name another of the server's keys (RSA vs
            # ed25519): the probe below checks the pin against all of them.
            out.print(f"pinned: {pinned} (not the key shown above; the probe checks the pin)", highlight=False)
        elif pinned is not None:
            out.print("pinned: yes (matches)", highlight=False)

    def refuse(detail: str) -> Exception:
        ledger.record_connection_test(cid, False)
        if json_output:
            report.update(ok=False, detail=detail)
            print_json(report)
        return fail(detail)

    if approved is None:
        if pinned is None:
            raise refuse(f"host key not trusted yet: check the fingerprint above, then rerun with {TRUST_HINT}")
        return config
    where = f"{config.host}:{config.port}"
    if approved != fingerprint:
        raise refuse(
            f"host key of {where} is {fingerprint}, not the approved {approved}: nothing pinned, no credentials sent"
        )
    if pinned == fingerprint:
        if not json_output:
            out.print("host key already pinned", highlight=False)
        return config
    if pinned is not None and not replace_pin:
        raise refuse(
            f"connection {cid} already pins {pinned}, not {fingerprint}: nothing changed; "
            "rerun with --replace-pin to replace the pin"
        )
    config = config.model_copy(update={"host_key": public_line})
    ledger.update_connection_config(cid, config_to_storable(config))
    report["pinned_fingerprint"] = fingerprint
    if pinned is not None:
        report["replaced_pin"] = pinned
    if not json_output:
        message = f"host key pin replaced: {pinned} -> {fingerprint}" if pinned else f"host key pinned: {fingerprint}"
        out.print(message, highlight=False)
    return config
