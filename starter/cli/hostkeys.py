"""Server identities for `dropzone connections test`: show what the server presents, pin only an approved one.

One path for both kinds: an SFTP server's host key and an FTPS server's
certificate. ``--trust SHA256:…`` names the fingerprint the operator checked with
the server's operator. The key or certificate is fetched without logging in and
pinned only when its fingerprint is that one: a man in the middle who appears
between the operator's first look and the ``--trust`` run presents another one,
gets nothing pinned and never sees a credential (the probe that follows logs in
only against the pin). An existing, different pin is replaced only with
``--replace-pin``. A connection nothing vouches for (no pin; for FTPS, no
``ca_bundle`` either) is refused until it is pinned.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dropzone.connection_config import FtpsConfig, SftpConfig, config_to_storable, validate_host_key_pin
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


@dataclass(frozen=True)
class Presented:
    """What a server presents (fetched without logging in) and how the connection pins it."""

    what: str  # "host key" or "certificate"
    short: str  # "key" or "certificate"
    report_key: str  # its entry in the --json report
    fingerprint: str
    shown: dict[str, str]  # that entry
    lines: tuple[str, ...]  # what the operator reads
    pinned: str | None  # the fingerprint the connection pins now
    pin: Callable[[], Any]  # the config, pinning what was presented


def unvouched(config: Any) -> str | None:
    """What is not yet vouched for ("host key", "certificate"): no pin, and for FTPS no ``ca_bundle``
    either (whose chain check would vouch); None when something does, or there is nothing to check."""
    if isinstance(config, SftpConfig) and config.host_key is None:
        return "host key"
    if isinstance(config, FtpsConfig) and not (config.allow_insecure_plaintext or config.ca_bundle or config.server_fingerprint):
        return "certificate"
    return None


def presented_by(config: Any) -> Presented | None:
    """Fetch the SFTP host key or the FTPS certificate; None for a dropzone without one."""
    if isinstance(config, SftpConfig):
        from dropzone.transports.sftp import fetch_host_key

        key_type, fingerprint, public_line = fetch_host_key(
            config.host, config.port, config.connect_timeout_seconds, legacy_algorithms=tuple(config.legacy_algorithms)
        )
        line = known_hosts_line(config.host, config.port, public_line)
        return Presented(
            what="host key", short="key", report_key="host_key", fingerprint=fingerprint,
            shown={"type": key_type, "fingerprint": fingerprint, "known_hosts": line},
            lines=(f"host key of {config.host}:{config.port}: {key_type} {fingerprint}", f"known_hosts: {line}"),
            pinned=pin_fingerprint(config.host_key) if config.host_key else None,
            pin=lambda: config.model_copy(update={"host_key": public_line}),
        )
    if isinstance(config, FtpsConfig) and not config.allow_insecure_plaintext:
        from dropzone.transports.ftps import fetch_certificate_fingerprint

        fingerprint = fetch_certificate_fingerprint(config)
        return Presented(
            what="certificate", short="certificate", report_key="certificate", fingerprint=fingerprint,
            shown={"fingerprint": fingerprint},
            lines=(f"certificate of {config.host}:{config.port}: {fingerprint}",),
            pinned=config.server_fingerprint,
            pin=lambda: config.model_copy(update={"server_fingerprint": fingerprint}),
        )
    return None


def show_and_pin(
    ledger: Any, cid: Any, config: Any, approved: str | None, replace_pin: bool, report: dict[str, Any], json_output: bool
) -> Any:
    """Print what the server presents; pin it if it is the approved one; refuse to go on when nothing vouches for it."""

    def refuse(detail: str) -> Exception:
        ledger.record_connection_test(cid, False)
        if json_output:
            report.update(ok=False, detail=detail)
            print_json(report)
        return fail(detail)

    presented = presented_by(config)
    if presented is None:
        if approved is not None:
            raise fail(f"connection {cid} ({config.label}) presents no host key or certificate: there is nothing to pin")
        return config
    what, fingerprint, pinned = presented.what, presented.fingerprint, presented.pinned
    report[presented.report_key] = presented.shown
    report["pinned_fingerprint"] = pinned
    if not json_output:
        for text in presented.lines:
            out.print(text, highlight=False)
        if pinned is not None and pinned != fingerprint:
            # A fingerprint pin may name another of an SSH server's keys (RSA vs
            # ed25519): the probe below checks the pin against all of them.
            out.print(f"pinned: {pinned} (not the {presented.short} shown above; the probe checks the pin)", highlight=False)
        elif pinned is not None:
            out.print("pinned: yes (matches)", highlight=False)

    if approved is None:
        if unvouched(config):
            raise refuse(f"{what} not trusted yet: check the fingerprint above, then rerun with {TRUST_HINT}")
        return config
    if approved != fingerprint:
        raise refuse(
            f"{what} of {config.host}:{config.port} is {fingerprint}, not the approved {approved}: "
            "nothing pinned, no credentials sent"
        )
    if pinned == fingerprint:
        if not json_output:
            out.print(f"{what} already pinned", highlight=False)
        return config
    if pinned is not None and not replace_pin:
        raise refuse(
            f"connection {cid} already pins {pinned}, not {fingerprint}: nothing changed; "
            "rerun with --replace-pin to replace the pin"
        )
    config = presented.pin()
    ledger.update_connection_config(cid, config_to_storable(config))
    report["pinned_fingerprint"] = fingerprint
    if pinned is not None:
        report["replaced_pin"] = pinned
    if not json_output:
        message = f"{what} pin replaced: {pinned} -> {fingerprint}" if pinned else f"{what} pinned: {fingerprint}"
        out.print(message, highlight=False)
    return config
