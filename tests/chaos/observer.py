"""The ERP's view during a fault run: what it could read, and answering with acks.

``PartialReadObserver`` lists export directories every few milliseconds and
reads every complete-looking name (``sales_order_*.json``) at once, as an
eager ERP would. A final name holding anything but one whole, valid export
document is a partial read. ``AckResponder`` plays the ERP: it answers every
export file with an ``ack_`` file, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from dropzone.transports.base import is_export_name
from tests.helpers import ack_body, write_ack_atomically


@dataclass
class PartialRead:
    path: str
    size: int
    reason: str


@dataclass
class ObserverReport:
    scans: int = 0
    reads: int = 0
    files: set[str] = field(default_factory=set)
    partial: list[PartialRead] = field(default_factory=list)
    # A final name whose bytes changed between two reads (a second delivery
    # replacing the first with different content).
    rewritten: list[str] = field(default_factory=list)
    # Temporary files seen (an upload in progress, or one a dead worker left).
    tmp_names: set[str] = field(default_factory=set)


class BackgroundLoop:
    """Calls ``tick()`` every ``every_seconds`` on a daemon thread while in a ``with`` block."""

    def __init__(self, name: str, every_seconds: float) -> None:
        self._every = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            time.sleep(self._every)


class PartialReadObserver(BackgroundLoop):
    def __init__(self, directories: list[Path], *, every_seconds: float = 0.003) -> None:
        super().__init__("partial-read-observer", every_seconds)
        self._directories = list(directories)
        self._digests: dict[str, str] = {}
        self._versions: dict[str, tuple[int, int, int]] = {}
        self.report = ObserverReport()

    def add(self, directory: Path) -> None:
        self._directories.append(directory)

    def stop(self) -> None:
        super().stop()
        self.scan()  # one last look at what stayed behind

    def tick(self) -> None:
        self.scan()

    def scan(self) -> None:
        self.report.scans += 1
        for directory in list(self._directories):
            try:
                names = _listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if is_export_name(name):
                    self._read(directory / name)
                elif name.endswith(".tmp"):
                    self.report.tmp_names.add(name)

    def _read(self, path: Path) -> None:
        # A file under a final name only changes by being written to (its size or
        # mtime moves) or replaced (a new inode): read it again only then, so
        # that watching hundreds of files every few ms stays cheap.
        try:
            st = os.stat(path)
        except FileNotFoundError:  # consumed or moved meanwhile
            return
        version = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._versions.get(str(path)) == version:
            return
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        self._versions[str(path)] = version
        self.report.reads += 1
        self.report.files.add(str(path))
        reason = _incomplete(data)
        if reason is not None:
            self.report.partial.append(PartialRead(str(path), len(data), reason))
            return
        digest = hashlib.sha256(data).hexdigest()
        seen = self._digests.setdefault(str(path), digest)
        if seen != digest and str(path) not in self.report.rewritten:
            self.report.rewritten.append(str(path))


def _listdir(directory: Path) -> list[str]:
    return os.listdir(directory)


def _incomplete(data: bytes) -> str | None:
    if not data:
        return "empty"
    try:
        document = json.loads(data)
    except ValueError as exc:
        return f"not valid JSON ({exc.msg} at byte {exc.pos})"
    if not isinstance(document, dict) or document.get("export_version") != "orderflow_export_json_v1":
        return "not an orderflow_export_json_v1 document"
    if not isinstance(document.get("lines"), list) or not document["lines"]:
        return "no lines"
    return None


class AckResponder(BackgroundLoop):
    """Answers each export file in ``export_dir`` with ``ack_<name>`` in ``ack_dir``."""

    def __init__(self, pairs: list[tuple[Path, Path]], *, every_seconds: float = 0.05) -> None:
        super().__init__("ack-responder", every_seconds)
        self._pairs = list(pairs)
        self._answered: set[str] = set()

    @property
    def answered(self) -> set[str]:
        return set(self._answered)

    def tick(self) -> None:
        for export_dir, ack_dir in list(self._pairs):
            try:
                names = [n for n in _listdir(export_dir) if is_export_name(n)]
            except FileNotFoundError:
                continue
            for name in names:
                if name in self._answered:
                    continue
                self._answered.add(name)
                order = f"SO-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
                write_ack_atomically(ack_dir, f"ack_{name}", ack_body(order))
