"""SSH keys: our private key, the server's host key, and matching it against the pin.

A pin (``host_key`` in the connection config) is either a ``<type> <base64>``
key line, as in known_hosts, or a bare OpenSSH ``SHA256:`` fingerprint. A key
line names its family, so only that family is offered; a bare fingerprint does
not say which of the server's keys it is, so the families are tried in turn
(only on a mismatch) and the one that matched is remembered per endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
from typing import Any

import paramiko

from dropzone import errors

__all__ = [
    "host_key_fingerprint",
    "key_family",
    "key_type_candidates",
    "load_private_key",
    "pin_matches",
    "public_key_line",
    "remember_key_types",
]

# Host key algorithm families, for fingerprint pins whose key type we do not know.
KEY_FAMILIES: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),  # an RSA key, with SHA-2 signatures only
}
_family_cache: dict[tuple[str, int, str], tuple[str, ...]] = {}


def host_key_fingerprint(pkey: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:<unpadded base64>`` of the public key blob."""
    digest = hashlib.sha256(pkey.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def public_key_line(pkey: paramiko.PKey) -> str:
    """``<type> <base64>`` as in known_hosts / authorized_keys."""
    return f"{key_family(pkey.get_name())} {pkey.get_base64()}"


def key_family(name: str) -> str:
    return "ssh-rsa" if name in ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa") else name


def pin_matches(pin: str, key: paramiko.PKey) -> bool:
    if pin.startswith("SHA256:"):
        return hmac.compare_digest(pin.rstrip("="), host_key_fingerprint(key))
    parts = pin.split()
    try:
        blob = base64.b64decode(parts[1])
    except (ValueError, IndexError):
        return False
    return hmac.compare_digest(blob, key.asbytes())


def key_type_candidates(host: str, port: int, pin: str | None) -> list[tuple[str, ...] | None]:
    """Which host key algorithms to offer, in order; None = paramiko's default list."""
    if pin is None:
        return [None]
    if not pin.startswith("SHA256:"):
        # Offer the pinned key's family; if the server no longer has one, look at
        # what it does present so the mismatch can be reported.
        family = KEY_FAMILIES.get(pin.split()[0])
        return [family, None] if family else [None]
    # A bare fingerprint does not say which of the server's keys it belongs to:
    # try the default first, then every family (only on a mismatch), and remember.
    cached = _family_cache.get((host, port, pin))
    first: list[tuple[str, ...] | None] = [cached] if cached else [None]
    return first + [f for f in KEY_FAMILIES.values() if f != cached]


def remember_key_types(host: str, port: int, pin: str, key_types: tuple[str, ...] | None) -> None:
    """A bare fingerprint matched with ``key_types`` offered: offer those first next time."""
    if pin.startswith("SHA256:") and key_types is not None:
        _family_cache[(host, port, pin)] = key_types


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """ed25519, RSA or ECDSA key from OpenSSH or PEM text; InvalidConfigError otherwise.

    Errors are raised outside the ``except`` blocks: the library exceptions are
    not kept even as ``__context__`` (they could quote key bytes).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    data = text.encode("utf-8")
    pw = passphrase.encode("utf-8") if passphrase else None
    problem: str | None = None
    loaded: Any = None
    try:
        try:
            loaded = serialization.load_ssh_private_key(data, password=pw)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=pw)
    except TypeError:
        # cryptography: "password was not given but key is encrypted" or the reverse
        problem = (
            "ssh_key is not encrypted but ssh_key_passphrase is set"
            if passphrase
            else "ssh_key is encrypted: ssh_key_passphrase is required"
        )
    except Exception:
        problem = "ssh_key could not be loaded (wrong ssh_key_passphrase or unsupported key format)"
    if problem is not None:
        raise errors.InvalidConfigError(problem)
    if isinstance(loaded, rsa.RSAPrivateKey):
        cls: type[paramiko.PKey] = paramiko.RSAKey
    elif isinstance(loaded, ed25519.Ed25519PrivateKey):
        cls = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        cls = paramiko.ECDSAKey
    else:
        raise errors.InvalidConfigError("ssh_key has an unsupported key type (use ed25519, RSA or ECDSA)")
    key: paramiko.PKey | None = None
    with contextlib.suppress(Exception):
        key = cls.from_private_key(io.StringIO(text), password=passphrase)
    if key is None:
        raise errors.InvalidConfigError("ssh_key could not be loaded by the SSH library")
    return key
