"""Nothing is written or moved outside export_path / ack_path (and ack_path's
processed/ and error/), and object keys stay under exports/<org_id>/, whatever
the names contain: ``../``, absolute paths, NUL, control characters, very long
names, Unicode look-alikes of '/' and '.'.

Property-based (hypothesis) over generated names, against a real directory
tree: after every operation the set of paths that exist must lie within the
allowed folders, and a decoy file outside them must be untouched.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dropzone import naming
from dropzone.connection_config import parse_connection_config
from dropzone.errors import DropzoneError
from dropzone.connectors import open_dropzone
from dropzone.delivery import Dropzone
from tests.helpers import sha256_of

HOSTILE = [
    "..", ".", "", "/", "../x.json", "../outside/decoy", "../../../x.json", "{SANDBOX}/x.json",
    "{SANDBOX}/p1/p2/p3/p4/outside/decoy", "ack_{SANDBOX}/x.json", "a/../../b.json", "ack_../../x.json",
    "error_..", "ack_/tmp/x.json", "ack_x.json\x00.txt", "\x00", "ack_\n.json", "ack_x.json\r", "\\..\\x.json",
    "ack_\u2215etc\u2215passwd", "ack_\uff0e\uff0e\uff0fx.json", "\u2024\u2024/x", "ack_\u2025.json",
    "ack_" + "a" * 300 + ".json", "x" * 5000, "processed", "error", "ack_.json", ".ack_x.json", "ack_x.json.tmp",
    "ack_sales_order_1.json", "error_sales_order_1.json", "sales_order_1.json", "sales_order_1.json.tmp",
]
LOOKALIKES = "\u2215\u2044\uff0f\u29f8\u2024\u2025\uff0e\u0338\u200b\ufeff"
NAME_CHARS = st.characters(codec="utf-8") | st.sampled_from(list("./\\\x00\n\t" + LOOKALIKES))
names = st.sampled_from(HOSTILE) | st.text(NAME_CHARS, max_size=40) | st.builds(
    lambda prefix, body, suffix: prefix + body + suffix,
    st.sampled_from(["ack_", "error_", "", "../", "/", "ack_../", "sales_order_"]),
    st.text(NAME_CHARS, max_size=300),
    st.sampled_from([".json", "", ".tmp", "/..", "\x00"]),
)
# Plain names too, so that the success paths (files really written and moved) are exercised.
plain = st.from_regex(r"[A-Za-z0-9._-]{1,60}", fullmatch=True)
names = names | plain | st.builds(lambda kind, body: kind + body, st.sampled_from(["ack_", "error_"]), plain)
uuid_like = st.uuids().map(str) | st.uuids() | st.text(NAME_CHARS, max_size=60) | st.sampled_from(HOSTILE)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Padding between the sandbox and the tree, so that names climbing up with a
# few "../" are exercised and still land inside the sandbox.
PADDING = ("p1", "p2", "p3", "p4")


@dataclass
class Tree:
    sandbox: Path  # a temporary directory; the tree sits a few levels below it
    root: Path
    export: Path
    ack: Path
    outside: Path
    decoy: Path

    def allowed(self) -> set[Path]:
        return {self.export, self.ack, self.ack / naming.PROCESSED_DIR, self.ack / naming.ERROR_DIR}

    def usable(self, name: str) -> str | None:
        """``name`` with ``{SANDBOX}`` filled in, or None when it could reach beyond the sandbox.

        This is the test's own safety net, not part of the property: the suite
        runs as root, and a regression in the code under test must not be able
        to move /etc/passwd. Names that would resolve outside the sandbox from
        any folder the dropzone joins names to are not used.
        """
        name = name.replace("{SANDBOX}", str(self.sandbox))
        prefix = str(self.sandbox) + os.sep
        for base in (*self.allowed(), self.root):
            for candidate in (name, f"{name}.1", f"{name}.999"):
                resolved = os.path.normpath(os.path.join(base, candidate.split("\x00")[0]))
                if not resolved.startswith(prefix):
                    return None
        return name

    def assert_confined(self) -> None:
        """Every path in the sandbox sits in an allowed folder; the decoy is untouched."""
        allowed = self.allowed()
        skeleton = {self.sandbox / Path(*PADDING[: i + 1]) for i in range(len(PADDING))} | {
            self.root, self.outside, self.decoy
        }
        for directory, subdirs, files in os.walk(self.sandbox, followlinks=False):
            here = Path(directory)
            for name in subdirs + files:
                path = here / name
                if path in allowed or path in skeleton:
                    continue
                assert path.parent in allowed, f"{path!r} is outside the allowed folders"
                assert not path.is_dir() or path.is_symlink(), f"unexpected directory {path!r}"
        assert self.decoy.read_bytes() == b"decoy"
        assert sorted(p.name for p in self.outside.iterdir()) == ["decoy"]
        assert sorted(p.name for p in self.root.iterdir()) == ["ack", "export", "outside"]


@contextmanager
def tree() -> Iterator[Tree]:
    with tempfile.TemporaryDirectory(prefix="dz-confine-") as tmp:
        sandbox = Path(tmp)
        root = sandbox.joinpath(*PADDING)
        t = Tree(sandbox=sandbox, root=root, export=root / "export", ack=root / "ack", outside=root / "outside",
                 decoy=root / "outside" / "decoy")
        for d in (t.export, t.ack, t.outside):
            d.mkdir(parents=True)
        t.decoy.write_bytes(b"decoy")
        # A symlink in the ack folder pointing outside: following it would write there.
        (t.ack / "ack_sales_order_link.json").symlink_to(t.decoy)
        yield t


def dropzone(t: Tree) -> Dropzone:
    return open_dropzone(parse_connection_config(
        {"mode": "filesystem", "export_path": str(t.export), "ack_path": str(t.ack)}
    ))


def os_allows(name: str) -> bool:
    return bool(name) and "/" not in name and "\x00" not in name and name not in (".", "..") and (
        len(name.encode("utf-8", "surrogateescape")) <= 255
    )


# --- object keys and file names ------------------------------------------------------


@PROPERTY
@given(org_id=uuid_like, filename=names)
@example(org_id=str(uuid.uuid4()), filename="../../other-org/x.json")
@example(org_id="../exports", filename="sales_order_1.json")
def test_storage_key_stays_under_exports_org(org_id, filename):
    try:
        key = naming.storage_key(org_id, filename)
    except ValueError:
        return
    org = uuid.UUID(str(org_id))
    assert key == f"exports/{org}/{filename}"
    assert posixpath.normpath(key) == key and key.count("/") == 2
    assert naming.is_safe_filename(key.rsplit("/", 1)[1])


@PROPERTY
@given(draft_id=uuid_like, export_id=uuid_like, moment=st.datetimes(timezones=st.just(UTC)))
def test_export_filename_is_always_a_plain_safe_name(draft_id, export_id, moment):
    try:
        name = naming.export_filename(draft_id, moment, export_id)
    except ValueError:
        return
    assert naming.is_safe_filename(name) and name.startswith("sales_order_") and name.endswith(".json")
    for derived in (naming.ack_name(name), naming.error_ack_name(name), naming.tmp_name(name, "abc123")):
        assert naming.is_safe_filename(derived)
        assert naming.parse_ack_name(derived) in (("ack", name), ("error", name), None)


@PROPERTY
@given(name=names)
def test_parse_ack_name_only_yields_safe_export_names(name):
    parsed = naming.parse_ack_name(name)
    if parsed is not None:
        kind, export_filename = parsed
        assert naming.is_safe_filename(name) and naming.is_safe_filename(export_filename)
        assert name == f"{kind}_{export_filename}"


# --- the filesystem dropzone ------------------------------------------------------------


@PROPERTY
@given(filename=names, token=st.from_regex(r"[a-z0-9]{1,32}", fullmatch=True) | st.sampled_from(["../x", "a/b", ""]))
@example(filename="../x.json", token="abc")
@example(filename="../outside/decoy", token="abc")
@example(filename="{SANDBOX}/x.json", token="abc")
@example(filename="sales_order_1.json", token="../../x")
def test_deliver_writes_only_into_export_path(filename, token):
    body = b"{}\n"
    with tree() as t:
        filename = t.usable(filename)
        assume(filename is not None)
        with suppress(DropzoneError, ValueError):
            result = dropzone(t).deliver(
                filename, [body], size=len(body), sha256=sha256_of(body), token=token
            )
            assert Path(result.path).parent == t.export and Path(result.path).read_bytes() == body
        t.assert_confined()


@PROPERTY
@given(present=st.lists(names, max_size=6), asked=st.lists(names, max_size=6),
       folders=st.lists(st.sampled_from(["processed", "error", "../x", "/tmp", "", "error/../..", "."]), min_size=1))
@example(present=[], asked=["../outside/decoy", "../x.json"], folders=["error"])
@example(present=["x.json"], asked=["{SANDBOX}/p1/p2/p3/p4/outside/decoy", "ack_../../x.json"], folders=["processed"])
@example(present=["ack_x.json"], asked=["ack_x.json"], folders=["../x", "/tmp", "error/../.."])
def test_ack_listing_reading_and_moving_stay_in_ack_path(present, asked, folders):
    with tree() as t:
        dz = dropzone(t)
        present = [n for n in map(t.usable, present) if n is not None]
        asked = [n for n in map(t.usable, asked) if n is not None]
        for name in present:
            if os_allows(name):
                with suppress(OSError):  # e.g. a name the filesystem itself refuses
                    (t.ack / name).write_bytes(b'{"status": "ACKED"}')
        for i, name in enumerate(asked + present):
            folder = folders[i % len(folders)]
            with suppress(DropzoneError, ValueError):
                for ack in dz.list_acks(name):
                    assert Path(dz.transport.join(t.ack, ack.name)).parent == t.ack
                    dz.read_ack(ack.name, max_bytes=1024)
            with suppress(DropzoneError, ValueError):
                moved = dz.move_ack(name, folder)  # type: ignore[arg-type]
                assert Path(moved).parent in (t.ack / "processed", t.ack / "error")
        try:
            everything = dz.list_all_acks()
        except DropzoneError:  # e.g. a plain file named "processed": refused, nothing listed
            everything = []
        for ack in everything:
            assert naming.is_safe_filename(ack.name)
            with suppress(DropzoneError):  # e.g. a plain file named "error" where the folder should be
                dz.move_ack(ack.name, "error")
        t.assert_confined()
        # list_all_acks lists the link so that it can be refused; moved, it is moved
        # as the link (never followed): exactly one link, still pointing at the decoy.
        name = "ack_sales_order_link.json"
        places = [t.ack / name, *(t.ack / folder / name for folder in ("processed", "error"))]
        links = [p for p in places if p.is_symlink()]
        assert len(links) == 1 and os.readlink(links[0]) == str(t.decoy)
