"""A small ERP simulator for a filesystem dropzone (used by `dropzone demo`).

It behaves like a careful ERP: it reads only complete export files (never
``*.tmp``), validates them as orderflow_export_json_v1, and answers each with
an ``ack_`` or ``error_`` file written atomically (temp name, then rename).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropzone.export_v1 import EXPORT_FORMAT_VERSION

Decision = tuple[bool, str]  # (accepted, erp_order_id or error_code)


def accept_all(document: dict[str, Any]) -> Decision:
    return True, ""


def write_atomically(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.writing")
    tmp.write_text(json.dumps(body), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class FilesystemErpSimulator:
    export_dir: Path
    ack_dir: Path
    decide: Callable[[dict[str, Any]], Decision] = accept_all
    interval_seconds: float = 0.2
    _seen: set[str] = field(default_factory=set)
    _counter: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def scan_once(self) -> int:
        answered = 0
        for path in sorted(self.export_dir.glob("sales_order_*.json")):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            self._answer(path)
            answered += 1
        return answered

    def _answer(self, path: Path) -> None:
        processed_at = "2025-12-27T10:10:00Z"
        try:
            document = json.loads(path.read_bytes())
            valid = document.get("export_version") == EXPORT_FORMAT_VERSION
        except (OSError, ValueError):
            document, valid = {}, False
        if not valid:
            write_atomically(self.ack_dir / f"error_{path.name}", {
                "status": "FAILED", "error_code": "INVALID_FORMAT",
                "message": "not an orderflow_export_json_v1 document", "processed_at": processed_at,
            })
            return
        accepted, value = self.decide(document)
        if accepted:
            self._counter += 1
            erp_order_id = value or f"SO-{self._counter:06d}"
            write_atomically(self.ack_dir / f"ack_{path.name}", {
                "status": "ACKED", "erp_order_id": erp_order_id, "processed_at": processed_at,
            })
        else:
            write_atomically(self.ack_dir / f"error_{path.name}", {
                "status": "FAILED", "error_code": value, "message": f"rejected by the ERP simulator ({value})",
                "processed_at": processed_at,
            })

    def start(self) -> FilesystemErpSimulator:
        self._thread = threading.Thread(target=self._loop, name="erp-sim", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.scan_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
