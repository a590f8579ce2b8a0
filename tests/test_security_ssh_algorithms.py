"""Only current SSH algorithms are offered; a legacy one only when a connection names it.

Real OpenSSH sshds: the suite's one (what we offer on the wire) and dedicated
ones configured to speak nothing but one legacy algorithm, which must refuse
us clearly (permanent ``SSH_ALGORITHM_MISMATCH``, before any credential is
sent) until the connection's ``legacy_algorithms`` names that algorithm.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dropzone.connection_config import parse_connection_config
from dropzone.errors import InvalidConfigError, SshAlgorithmError
from dropzone.ssh_algorithms import CURRENT, LEGACY, UNAVAILABLE
from dropzone.delivery import Dropzone
from dropzone.transports.sftp import SftpTransport, _paramiko, fetch_host_key
from tests.fixtures.sshd import dedicated_openssh_server
from tests.helpers import sha256_of

README = Path(__file__).resolve().parent.parent / "README.md"
WEAK = {
    "aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc",
    "hmac-md5", "hmac-md5-96", "hmac-sha1", "hmac-sha1-96",
    "ssh-rsa", "ssh-dss",
    "diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1",
}
PSEUDO_KEX = ("ext-info-", "kex-strict-")
TABLES = _paramiko.implemented_algorithms()


def test_the_offer_on_the_wire_holds_only_current_algorithms(openssh_server):
    assert WEAK & {name for table in TABLES.values() for name in table}, "paramiko implements no weak one?"
    with SftpTransport.connect(parse_connection_config(openssh_server.config())) as sftp:
        transport = sftp._s.transport
        sent = _paramiko.sent_kex_init(transport)  # the KEXINIT we sent the server
        pubkeys = transport.preferred_pubkeys
    offered = {
        "kex": [k for k in sent["kex_algo_list"] if not k.startswith(PSEUDO_KEX)],
        "keys": [k for k in sent["server_key_algo_list"] if "-cert-" not in k],
        "ciphers": sent["client_encrypt_algo_list"],
        "macs": sent["client_mac_algo_list"],
    }
    for category, names in offered.items():
        assert not set(names) & WEAK, f"weak {category} offered: {set(names) & WEAK}"
        assert names == [n for n in CURRENT[category] if n in TABLES[category]], category
    assert sent["server_encrypt_algo_list"] == offered["ciphers"]
    assert sent["server_mac_algo_list"] == offered["macs"]
    assert not set(pubkeys) & WEAK and set(pubkeys) <= set(CURRENT["keys"])


def test_the_algorithm_lists_match_the_installed_ssh_library_and_the_readme():
    for category, names in CURRENT.items():
        assert set(names) <= set(TABLES[category]), category
        assert not set(names) & WEAK
    for name, category in LEGACY.items():
        assert name in TABLES[category], f"{name} is no longer implemented: move it to UNAVAILABLE"
    for name in UNAVAILABLE:
        assert all(name not in table for table in TABLES.values()), f"{name} is implemented again"
    security = README.read_text(encoding="utf-8").split("## Security", 1)[1].split("\n## ", 1)[0]
    for name in [*(n for names in CURRENT.values() for n in names), *LEGACY, *UNAVAILABLE]:
        assert f"`{name}`" in security, f"README's Security section does not list {name}"


LEGACY_ONLY = [
    pytest.param(["Ciphers aes256-cbc"], "aes256-cbc", "cipher", "3des-cbc", id="cbc-cipher"),
    pytest.param(["Ciphers aes128-ctr", "MACs hmac-sha1"], "hmac-sha1", "MAC", "hmac-md5", id="sha1-mac"),
]


@pytest.mark.parametrize(("sshd_config", "legacy", "what", "other"), LEGACY_ONLY)
def test_a_legacy_only_server_is_refused_unless_the_connection_allows_it(
    ssh_client_keys, sshd_config, legacy, what, other
):
    body = b'{"order": "legacy"}\n'
    with dedicated_openssh_server(ssh_client_keys, sshd_config) as server:
        for allowed in ([], [other]):  # nothing, or another legacy algorithm: refused
            with pytest.raises(SshAlgorithmError) as refused:
                SftpTransport.connect(parse_connection_config(server.config(legacy_algorithms=allowed)))
            error = refused.value
            assert error.code == "SSH_ALGORITHM_MISMATCH" and not error.retryable
            assert f"the server offers no {what} this connection allows" in error.message
            assert re.search(rf"it offers [^;]*\b{re.escape(legacy)}\b", error.message)
            assert f'legacy_algorithms (e.g. ["{legacy}"])' in error.message
            assert server.password not in error.message
        assert server.auth_attempts(server.username) == 0, "credentials reached a server we refused"

        config = parse_connection_config(server.config(legacy_algorithms=[legacy]))
        with Dropzone(SftpTransport.connect(config)) as dz:
            transport = dz.transport._s.transport
            assert legacy in (transport.local_cipher, transport.local_mac)
            assert legacy in (transport.remote_cipher, transport.remote_mac)
            result = dz.deliver(
                "sales_order_legacy.json", [body], size=len(body), sha256=sha256_of(body),
                token="t1",
            )
        assert server.local_path(result.path).read_bytes() == body


DROPPED = [
    pytest.param(["HostKeyAlgorithms ssh-rsa"], "ssh-rsa", "host key algorithm", id="ssh-rsa-host-key"),
    pytest.param(["KexAlgorithms diffie-hellman-group14-sha1"], "diffie-hellman-group14-sha1",
                 "key exchange algorithm", id="group14-sha1-kex"),
]


@pytest.mark.parametrize(("sshd_config", "name", "what"), DROPPED)
def test_a_server_that_needs_an_algorithm_the_library_dropped_is_refused_clearly(
    ssh_client_keys, sshd_config, name, what
):
    with dedicated_openssh_server(ssh_client_keys, sshd_config) as server:
        pin = server.host_key_fingerprints["ssh-rsa" if name == "ssh-rsa" else "ssh-ed25519"]
        with pytest.raises(SshAlgorithmError) as refused:
            SftpTransport.connect(parse_connection_config(server.config(host_key=pin)))
        message = refused.value.message
        assert f"the server offers no {what} this connection allows: it offers {name}" in message
        assert f"{name} cannot be enabled" in message
        assert "ssh-rsa" not in message.split("allowed: ", 1)[1].split(";")[0].split(", ")
        with pytest.raises(SshAlgorithmError, match=f"it offers {name}"):
            fetch_host_key(server.host, server.port, timeout=5)
        assert server.auth_attempts(server.username) == 0

        with pytest.raises(InvalidConfigError, match=rf"legacy_algorithms: {name} cannot be enabled"):
            parse_connection_config(server.config(host_key=pin, legacy_algorithms=[name]))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["aes256-cbc", "hmac-sha1", "aes256-cbc"], None),
        ([], None),
        (["bogus-cipher"], "legacy_algorithms: unknown legacy algorithm 'bogus-cipher'; known: aes128-cbc"),
        (["ssh-dss"], "legacy_algorithms: ssh-dss cannot be enabled"),
        ("aes256-cbc", "legacy_algorithms: must be a list"),
        ([7], "legacy_algorithms.0: must be a string"),
    ],
    ids=["deduplicated", "empty", "unknown", "unavailable", "not-a-list", "not-a-string"],
)
def test_legacy_algorithms_are_validated(openssh_server, value, expected):
    data = openssh_server.config(legacy_algorithms=value)
    if expected is None:
        assert parse_connection_config(data).legacy_algorithms == tuple(dict.fromkeys(value))
        return
    with pytest.raises(InvalidConfigError) as refused:
        parse_connection_config(data)
    assert expected in refused.value.message
    assert openssh_server.password not in refused.value.message
