"""The paramiko internals ``dropzone/transports/sftp/_paramiko.py`` relies on are still there.

A paramiko release may rename or reshape any private attribute without notice.
These tests fail loudly, naming the attribute and the installed version, when
one the module relies on disappears or changes signature, check that the
module uses no internal it does not list and that nothing else in the tree
touches one, and make a real round trip through each against OpenSSH and asyncssh.
"""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from pathlib import Path

import paramiko
import pytest
from packaging.requirements import Requirement
from paramiko.sftp import SFTP_FLAG_CREATE, SFTP_FLAG_READ, SFTP_FLAG_WRITE

from dropzone import ssh_algorithms
from dropzone.connection_config import parse_connection_config
from dropzone.transports.sftp import SftpStatusError, SftpTransport, _paramiko
from dropzone.transports.sftp.errors import FX_NO_SUCH_FILE, NoCommonAlgorithm
from tests.dropzone.transports._util import body_of, sha

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "dropzone" / "transports" / "sftp" / "_paramiko.py"
SCANNED = ["dropzone", "activities", "workflows", "starter", "tests", "benchmarks", "worker.py"]
VERSION = f"installed paramiko {paramiko.__version__}"


def _parameters(fn: object) -> tuple[str, ...]:
    out = []
    for p in inspect.signature(fn).parameters.values():  # type: ignore[arg-type]
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.default is not p.empty:
            out.append(f"{p.name}={p.default!r}")
        else:
            out.append(p.name)
    return tuple(out)


@pytest.mark.parametrize(
    ("owner", "name", "expected"),
    [(owner, name, expected) for (owner, name), expected in _paramiko.INTERNALS.items()],
    ids=[f"{owner.__name__}.{name}" for owner, name in _paramiko.INTERNALS],
)
def test_every_internal_relied_on_is_there_with_its_signature(owner, name, expected):
    where = f"paramiko.{owner.__name__}.{name}"
    if not hasattr(owner, name):
        pytest.fail(f"{where} is gone in the {VERSION}; dropzone/transports/sftp/_paramiko.py relies on it", False)
    attr = getattr(owner, name)
    if expected is None:
        assert isinstance(attr, (dict, tuple, list)) and attr, (
            f"{where} is no longer a non-empty table in the {VERSION} (it is {type(attr).__name__})"
        )
        assert all(isinstance(k, str) for k in attr), f"{where} no longer holds algorithm names in the {VERSION}"
        return
    assert callable(attr), f"{where} is no longer a method in the {VERSION}"
    got = _parameters(attr)
    assert got == expected, (
        f"{where} changed signature in the {VERSION}: ({', '.join(got)}), "
        f"dropzone/transports/sftp/_paramiko.py relies on ({', '.join(expected)})"
    )


def test_the_pinned_range_holds_the_installed_version_and_is_the_one_documented():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = [r for r in project["dependencies"] if Requirement(r).name == "paramiko"]
    assert len(pins) == 1 and Requirement(pins[0]).specifier, "pyproject.toml must pin paramiko to a range"
    spec = Requirement(pins[0]).specifier
    assert paramiko.__version__ in spec, f"{VERSION} is outside the range _paramiko.py is verified with ({spec})"
    assert f"``{pins[0]}``" in (_paramiko.__doc__ or ""), f"_paramiko.py's docstring must name the pin {pins[0]}"
    assert f"paramiko {paramiko.__version__}" in (_paramiko.__doc__ or ""), (
        f"{VERSION} is not among the versions _paramiko.py's docstring says it was checked with"
    )


def _private_attributes(tree: ast.AST) -> set[str]:
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}  # overrides
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_the_module_uses_no_internal_it_does_not_list():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    listed = {name for _, name in _paramiko.INTERNALS} | {_paramiko.ASYNC_RESPONSE}
    unlisted = _private_attributes(tree) - listed
    assert not unlisted, f"_paramiko.py uses private names INTERNALS does not list (so nothing checks them): {unlisted}"


def test_nothing_else_in_the_tree_touches_a_paramiko_internal():
    names = sorted({name for _, name in _paramiko.INTERNALS} | {_paramiko.ASYNC_RESPONSE})
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    hits = []
    for entry in SCANNED:
        base = ROOT / entry
        for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
            if path in (MODULE, Path(__file__).resolve()):
                continue
            text = path.read_text(encoding="utf-8")
            for lineno, line in enumerate(text.splitlines(), 1):
                for name in pattern.findall(line):
                    # A class's own attribute of the same name (a workflow's self._request) is not paramiko's.
                    if re.search(rf"(self\.{name}\s*[:=][^=])|(^\s*{name}\s*:)", text, re.M):
                        continue
                    hits.append(f"{path.relative_to(ROOT)}:{lineno}: {name}")
    assert not hits, "paramiko internals used outside dropzone/transports/sftp/_paramiko.py:\n" + "\n".join(hits)


def test_a_real_round_trip_through_every_internal(sftp_server, tmp_path):
    config = parse_connection_config(sftp_server.config())
    with SftpTransport.connect(config) as transport:
        session = transport._s
        ssh, sftp = session.transport, session.sftp
        assert isinstance(ssh, _paramiko.Transport) and isinstance(sftp, _paramiko.SFTPClient)

        # _send_version kept the server's extensions; limits() made a raw request.
        assert "posix-rename@openssh.com" in sftp.server_extensions, sftp.server_extensions
        assert session.posix_rename
        assert 4096 <= session.write_size <= _paramiko.MAX_REQUEST_SIZE
        assert 4096 <= session.read_size <= _paramiko.MAX_REQUEST_SIZE

        # The algorithm tables and our pubkey offer (set through _preferred_pubkeys).
        implemented = _paramiko.implemented_algorithms()
        assert ssh.local_cipher in implemented["ciphers"] and ssh.local_mac in implemented["macs"]
        allowed_keys = tuple(k for k in ssh_algorithms.allowed(())["keys"] if k in implemented["keys"])
        assert tuple(ssh.preferred_pubkeys) == allowed_keys

        # _get_latest_kex_init / _really_parse_kex_init: the keys mismatch() reads.
        sent = _paramiko.sent_kex_init(ssh)
        assert set(_paramiko.KEX_INIT_KEYS) <= set(sent), f"KEXINIT fields changed in the {VERSION}: {sorted(sent)}"
        assert all(isinstance(sent[k], list) and sent[k] for k in _paramiko.KEX_INIT_KEYS)
        nothing = {**sent, "server_encrypt_algo_list": ["none-such"], "client_encrypt_algo_list": ["none-such"]}
        refused = _paramiko.mismatch(ssh, nothing)
        assert isinstance(refused, NoCommonAlgorithm) and refused.what == "cipher" and refused.offered == ["none-such"]

        # _request + _convert_status: a status reply becomes SftpStatusError with its code.
        with pytest.raises(SftpStatusError) as missing:
            sftp.stat(f"{config.export_path}/no-such-file")
        assert missing.value.sftp_code == FX_NO_SUCH_FILE

        # _async_request + _read_response + the sinks' _async_response: pipelined write and read.
        data = body_of(3 * session.write_size + 5)
        path = transport.join(config.export_path, "internals.bin")
        written = transport.write_new(path, [data], limit=len(data), exclusive=True, progress=None)
        assert written == (len(data), sha(data))
        assert sftp_server.local_path(path).read_bytes() == data
        assert b"".join(transport.iter_file(path, 65536)) == data
        handle = sftp.open_handle(path, SFTP_FLAG_READ, None)
        try:
            assert sftp.read_at(handle, len(data), 10) == b""  # EOF status -> EOFError -> b""
            # A write on a read-only handle: the failure status reaches the sink and is raised.
            with pytest.raises(SftpStatusError):
                sftp.write_pipelined(handle, [b"x" * 10], _Counter(), request_size=4096, file_mode=0o640)
        finally:
            sftp.close_handle(handle)
        assert sftp_server.local_path(path).read_bytes() == data

        # The extension requests: posix-rename replaces, the plain rename refuses.
        other = transport.join(config.export_path, "internals2.bin")
        handle = sftp.open_handle(other, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE, 0o640)
        sftp.close_handle(handle)
        assert transport.rename_noreplace(other, path) is False
        assert transport.publish(other, path) is True
        assert sftp_server.local_path(path).read_bytes() == b""


class _Counter:
    count = 0

    def feed(self, chunk: bytes) -> bytes:
        self.count += len(chunk)
        return chunk

    def done(self, written: int) -> None:
        pass
