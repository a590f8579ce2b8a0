"""Which SSH algorithms an SFTP connection offers: current ones only, legacy ones by name.

The SFTP transport offers exactly ``CURRENT`` (in this order of preference).
An old ERP server that speaks none of them can be reached by naming the legacy
algorithm it needs in the connection's ``legacy_algorithms`` field; only names
in ``LEGACY`` can be named. ``UNAVAILABLE`` lists what the pinned SSH library
(paramiko 5) no longer implements at all, so that a config asking for it gets a
clear answer instead of "unknown". The README's Security section lists the
same algorithms; tests/test_security_ssh_algorithms.py keeps the three in step
with the installed paramiko.

No paramiko import here: ``connection_config`` validates against these lists.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CURRENT", "LEGACY", "UNAVAILABLE", "allowed", "check_legacy"]

# category -> names in preference order (paramiko's own names).
CURRENT: dict[str, tuple[str, ...]] = {
    "kex": (
        "mlkem768x25519-sha256",
        "curve25519-sha256@libssh.org",
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group-exchange-sha256",
        "diffie-hellman-group14-sha256",
    ),
    # Host keys and our own key's signatures alike: SHA-2 RSA signatures only.
    "keys": (
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "rsa-sha2-512",
        "rsa-sha2-256",
    ),
    "ciphers": (
        "aes128-gcm@openssh.com",  # +20-45 % throughput over aes128-ctr
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    ),
    "macs": (
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com",
        "hmac-sha2-256",
        "hmac-sha2-512",
    ),
}

# Legacy algorithms a connection may re-enable by name -> their category.
LEGACY: dict[str, str] = {
    "aes128-cbc": "ciphers",
    "aes192-cbc": "ciphers",
    "aes256-cbc": "ciphers",
    "3des-cbc": "ciphers",
    "hmac-sha1": "macs",
    "hmac-sha1-96": "macs",
    "hmac-md5": "macs",
    "hmac-md5-96": "macs",
}

_NEEDS = "the server must offer one of the current algorithms (README, Security)"
UNAVAILABLE: dict[str, str] = {
    "ssh-rsa": "RSA with SHA-1 signatures; the server must offer rsa-sha2-256 or rsa-sha2-512 (OpenSSH 7.2 and later)",
    "ssh-dss": f"DSA keys; {_NEEDS}",
    "diffie-hellman-group1-sha1": f"1024-bit key exchange with SHA-1; {_NEEDS}",
    "diffie-hellman-group14-sha1": f"key exchange with SHA-1; diffie-hellman-group14-sha256 is its successor; {_NEEDS}",
    "diffie-hellman-group-exchange-sha1": f"key exchange with SHA-1; {_NEEDS}",
}


def check_legacy(names: Iterable[str]) -> tuple[str, ...]:
    """The names, de-duplicated in order; ValueError naming the first that cannot be enabled."""
    out: list[str] = []
    for name in names:
        if name in UNAVAILABLE:
            raise ValueError(
                f"{name} cannot be enabled: the SSH library no longer implements it ({UNAVAILABLE[name]})"
            )
        if name not in LEGACY:
            shown = name if name.isascii() and name.isprintable() and len(name) <= 64 else "(unprintable name)"
            raise ValueError(f"unknown legacy algorithm {shown!r}; known: {', '.join(LEGACY)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def allowed(legacy: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
    """What to offer: ``CURRENT`` first, then the named legacy algorithms of each category."""
    extra = check_legacy(legacy)
    return {
        category: names + tuple(n for n in extra if LEGACY[n] == category)
        for category, names in CURRENT.items()
    }
