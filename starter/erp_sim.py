"""The ERP simulator: the ERP's side of any dropzone, filesystem or SFTP.

It behaves like a careful ERP: it reads only complete export files (never
``*.tmp``), validates each against ``orderflow_export_json_v1`` (the
``ExportV1`` model plus the key order its field order fixes), and answers each with
an ``ack_`` or ``error_`` file written atomically (a hidden temporary file,
then a rename that never replaces).  Rejection rules and a processing delay
are configurable.  It talks to the dropzone only through the transport layer
(``starter.erp_side``), so it works against any connection the pipeline can deliver to.

Used by ``dropzone demo`` and ``dropzone dev`` (in a thread) and by
``dropzone erp-sim`` (in the foreground, against a user's staging dropzone).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dropzone import errors, naming
from dropzone.connection_config import parse_connection_config
from dropzone.export_v1 import Buffer, ExportV1
from starter.erp_check import check_export
from starter.erp_side import ErpSide, open_erp_side

__all__ = [
    "Answer",
    "ErpRules",
    "ErpSimulator",
    "FilesystemErpSimulator",
    "open_erp_side",
    "validate_export",
]

# Anything the pipeline delivers (a draft_ref draft is at most 512 MiB, its export
# ~1.3× that): checked by streaming, so the limit is about disk and patience, not memory.
MAX_EXPORT_BYTES = 1024 * 1024 * 1024
MAX_REPORTED_PROBLEMS = 5
INVALID_FORMAT = "INVALID_FORMAT"
INVALID_CUSTOMER = "INVALID_CUSTOMER"
SIMULATED_REJECTION = "SIMULATED_REJECTION"


# ---------------------------------------------------------------------------
# what the ERP checks and decides (pure)
# ---------------------------------------------------------------------------


def validate_export(body: Buffer) -> tuple[ExportV1 | None, list[str]]:
    """(the document's head, []) for a valid orderflow_export_json_v1 file, else (None, problems).

    The head has every field but ``lines`` (left empty): the file is checked by
    streaming (starter/erp_check.py), never held as one model per line.
    """
    check = check_export(body)
    return check.document, check.problems


@dataclass
class ErpRules:
    """Which valid exports the simulated ERP refuses.  Changing ``reject_customers``
    while it runs is how the demo "fixes the customer in the ERP"."""

    reject_customers: set[str] = field(default_factory=set)
    reject_rate: float = 0.0
    seed: int | None = None
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.reject_rate <= 1.0:
            raise errors.InvalidConfigError(f"reject rate {self.reject_rate} must be between 0 and 1")
        self._rng = random.Random(self.seed)

    def rejection(self, document: ExportV1) -> tuple[str, str] | None:
        """(error_code, message) when the ERP refuses this order, else None."""
        number = document.customer.erp_customer_number
        if number in self.reject_customers:
            return INVALID_CUSTOMER, f"Customer {number} not found in ERP"
        if self.reject_rate and self._rng.random() < self.reject_rate:
            return SIMULATED_REJECTION, "rejected at random by the ERP simulator (reject rate)"
        return None


@dataclass(frozen=True)
class Answer:
    """What the simulated ERP wrote back for one export file."""

    export_filename: str
    status: Literal["ACKED", "FAILED"]
    erp_order_id: str | None = None
    error_code: str | None = None
    message: str | None = None

    @property
    def ack_name(self) -> str:
        if self.status == "ACKED":
            return naming.ack_name(self.export_filename)
        return naming.error_ack_name(self.export_filename)

    def body(self, processed_at: datetime) -> bytes:
        stamp = processed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.status == "ACKED":
            doc: dict[str, Any] = {"status": "ACKED", "erp_order_id": self.erp_order_id, "processed_at": stamp}
        else:
            doc = {"status": "FAILED", "error_code": self.error_code, "message": self.message, "processed_at": stamp}
        return json.dumps(doc).encode("utf-8")

    def describe(self) -> str:
        if self.status == "ACKED":
            return f"ACKED  {self.export_filename} -> {self.erp_order_id}"
        return f"FAILED {self.export_filename} {self.error_code}: {self.message}"


# ---------------------------------------------------------------------------
# the simulator
# ---------------------------------------------------------------------------


class ErpSimulator:
    """Answers every complete export file in a dropzone, ``delay_seconds`` after first seeing it.

    ``open_side`` opens the ERP's session (reopened after a transient failure).
    Exports already answered — an ``ack_``/``error_`` file in ack_path or in the
    worker's ``processed/``/``error/`` folders — are never answered twice, even
    across restarts.  One thread at a time: ``run`` in the foreground, or
    ``start``/``stop`` for a background thread.
    """

    def __init__(
        self,
        open_side: Callable[[], ErpSide],
        rules: ErpRules | None = None,
        *,
        delay_seconds: float = 0.0,
        interval_seconds: float = 0.5,
        max_export_bytes: int = MAX_EXPORT_BYTES,
        on_answer: Callable[[Answer], None] | None = None,
        on_problem: Callable[[errors.DropzoneError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if delay_seconds < 0 or interval_seconds <= 0:
            raise errors.InvalidConfigError("delay must be >= 0 and interval > 0 seconds")
        self.rules = rules or ErpRules()
        self.delay_seconds = delay_seconds
        self.interval_seconds = interval_seconds
        self.max_export_bytes = max_export_bytes
        self._open_side = open_side
        self._on_answer = on_answer
        self._on_problem = on_problem
        self._clock = clock
        self._side: ErpSide | None = None
        self._answered: set[str] | None = None  # read from the dropzone on the first scan
        self._due: dict[str, float] = {}
        self._sequence = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.answers: list[Answer] = []
        self.error: errors.DropzoneError | None = None

    # ----- one pass -----

    def scan_once(self, *, only_known: bool = False) -> list[Answer]:
        """List the exports, note new ones, answer those whose delay has passed."""
        side = self._session()
        names = side.list_exports()
        if self._answered is None:
            self._answered = side.answered_exports()
            # Order ids continue after the answers already there, so a restart never repeats one.
            self._sequence = len(self._answered)
        now = self._clock()
        if not only_known:
            for name in names:
                if name not in self._answered and name not in self._due:
                    self._due[name] = now + self.delay_seconds
        present = set(names)
        answers = []
        for name, due in sorted(self._due.items(), key=lambda item: (item[1], item[0])):
            if due > now:
                continue
            del self._due[name]
            self._answered.add(name)
            if name not in present:
                continue  # removed before the ERP got to it
            answer = self._answer(side, name)
            if answer is not None:
                answers.append(answer)
                self.answers.append(answer)
                if self._on_answer is not None:
                    self._on_answer(answer)
        return answers

    def _answer(self, side: ErpSide, name: str) -> Answer | None:
        try:
            body = side.read_export_buffer(name, max_bytes=self.max_export_bytes)
        except errors.MissingDirectoryError:
            return None  # removed between listing and reading
        answer = self.decide(name, body)
        del body
        try:
            side.write_ack(answer.ack_name, answer.body(datetime.now(UTC)))
        except errors.DeliveryConflictError:
            return None  # answered by someone else meanwhile
        return answer

    def decide(self, name: str, body: Buffer | None) -> Answer:
        """The answer to one export file; ``body`` None: larger than ``max_export_bytes``."""
        if body is None or len(body) > self.max_export_bytes:
            return Answer(name, "FAILED", error_code=INVALID_FORMAT,
                          message=f"larger than {self.max_export_bytes} bytes")
        check = check_export(body)
        document = check.document
        if document is None:
            shown = "; ".join(check.problems[:MAX_REPORTED_PROBLEMS])
            if check.total > MAX_REPORTED_PROBLEMS:
                shown += f"; and {check.total - MAX_REPORTED_PROBLEMS} more"
            return Answer(name, "FAILED", error_code=INVALID_FORMAT,
                          message=f"not a valid orderflow_export_json_v1 document: {shown}")
        rejection = self.rules.rejection(document)
        if rejection is not None:
            return Answer(name, "FAILED", error_code=rejection[0], message=rejection[1])
        self._sequence += 1
        return Answer(name, "ACKED", erp_order_id=f"SO-{self._sequence:06d}")

    def pending(self) -> int:
        return len(self._due)

    # ----- loops -----

    def run(self, stop: threading.Event | None = None) -> None:
        """Scan until ``stop`` is set; transient dropzone failures are reported and retried."""
        stop = stop or self._stop
        try:
            while True:
                try:
                    self.scan_once()
                except errors.TransientError as exc:
                    self._drop_session()
                    self._report(exc)
                if stop.wait(self._next_wait()):
                    return
        finally:
            self.close()

    def run_once(self) -> list[Answer]:
        """Answer the exports present now (waiting out the delay), then return."""
        answers = self.scan_once()
        while self._due:
            time.sleep(max(0.0, min(self._due.values()) - self._clock()))
            answers += self.scan_once(only_known=True)
        return answers

    def _next_wait(self) -> float:
        if not self._due:
            return self.interval_seconds
        return max(0.01, min(self.interval_seconds, min(self._due.values()) - self._clock()))

    def start(self) -> ErpSimulator:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_in_thread, name="erp-sim", daemon=True)
        self._thread.start()
        return self

    def _run_in_thread(self) -> None:
        try:
            self.run(self._stop)
        except errors.DropzoneError as exc:  # permanent: say so instead of dying silently
            self.error = exc
            self._report(exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    # ----- session -----

    def _session(self) -> ErpSide:
        if self._side is None:
            self._side = self._open_side()
        return self._side

    def _drop_session(self) -> None:
        side, self._side = self._side, None
        if side is not None:
            try:
                side.close()
            except errors.DropzoneError:
                pass

    def close(self) -> None:
        self._drop_session()

    def _report(self, exc: errors.DropzoneError) -> None:
        if self._on_problem is not None:
            self._on_problem(exc)


class FilesystemErpSimulator(ErpSimulator):
    """The simulator on two local directories (the demo's dropzone, tests)."""

    def __init__(self, export_dir: Path, ack_dir: Path, rules: ErpRules | None = None, **options: Any) -> None:
        config = parse_connection_config(
            {"mode": "filesystem", "export_path": str(export_dir), "ack_path": str(ack_dir)}
        )
        options.setdefault("interval_seconds", 0.2)
        super().__init__(lambda: open_erp_side(config), rules, **options)
