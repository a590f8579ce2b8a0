"""The real worker, but it SIGKILLs itself right at chosen side effects.

``python -m tests.chaos.faulty_worker`` runs ``worker.main()`` with the usual
``DROPZONE_*`` settings, after wrapping its adapters so that it can die:

    after_s3_put        the rendered export is in the bucket; SENT is far away
    mid_upload          part of the export is in the dropzone's ``.tmp`` file
    after_rename        the final file is visible; the ledger does not say SENT
    after_ack_recorded  the row is ACKED; the ack file has not been moved yet
    before_ack_moved    the answer is recorded and handed to the export's run
                        (by the ack listener); its file is still in ack_path

The plan (``CHAOS_PLAN``, JSON) says how many kills each point gets and the
chance that a passing call takes one; a kill is claimed by creating a marker
file exclusively in ``CHAOS_MARKERS``, so quotas hold across the restarts the
test performs, and the marker names what was hit. The plan may also shorten
timeouts of the worker's ``Policies`` (field names, seconds), so that Temporal
notices a dead worker's activities in seconds rather than the production minutes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import worker
from dropzone.delivery import Dropzone
from workflows.policies import DEFAULT_POLICIES, Policies

POINTS = ("after_s3_put", "mid_upload", "after_rename", "after_ack_recorded", "before_ack_moved")
# Small pieces, so that a kill after the first one leaves a partial .tmp behind.
UPLOAD_PIECE = 16 * 1024
# Long enough for paramiko's pipelined write of the first piece to reach the server.
LET_THE_WRITE_LAND_SECONDS = 0.3


_dying = threading.Lock()


@dataclass(frozen=True)
class Plan:
    kills: dict[str, int]
    probability: float
    markers: Path
    timeouts: dict[str, float]

    @classmethod
    def from_env(cls) -> Plan:
        raw = json.loads(Path(os.environ["CHAOS_PLAN"]).read_text(encoding="utf-8"))
        return cls(
            kills={point: int(raw["kills"].get(point, 0)) for point in POINTS},
            probability=float(raw["probability"]),
            markers=Path(os.environ["CHAOS_MARKERS"]),
            timeouts={name: float(seconds) for name, seconds in raw.get("timeouts", {}).items()},
        )

    def claim(self, point: str, subject: str) -> bool:
        """True (and a kill of ``point`` spent) if this call is to die.

        Activities run on many threads: the first to claim a kill keeps the
        lock until the process dies, so one death never spends two kills.
        """
        if self.kills[point] == 0 or random.random() >= self.probability:
            return False
        _dying.acquire()
        for n in range(self.kills[point]):
            try:
                fd = os.open(self.markers / f"{point}.{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            os.write(fd, subject.encode())
            os.fsync(fd)
            os.close(fd)
            return True
        _dying.release()
        return False  # every kill of this point is spent: carry on like the real worker

    def maybe_die(self, point: str, subject: str) -> None:
        if self.claim(point, subject):
            die()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Proxy:
    def __init__(self, target: Any, plan: Plan) -> None:
        self._target = target
        self._plan = plan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class FaultyStore(_Proxy):
    def put(self, key: str, *args: Any, **kwargs: Any) -> Any:
        result = self._target.put(key, *args, **kwargs)
        if key.startswith("exports/"):
            self._plan.maybe_die("after_s3_put", key)
        return result

    def iter_chunks(self, key: str, *args: Any, **kwargs: Any) -> Iterator[bytes]:
        first = True
        for chunk in self._target.iter_chunks(key, *args, **kwargs):
            for start in range(0, len(chunk), UPLOAD_PIECE):
                if not first and self._plan.claim("mid_upload", key):
                    # The transport took the previous piece and asks for more:
                    # the .tmp exists and holds part of the export.
                    time.sleep(LET_THE_WRITE_LAND_SECONDS)
                    die()
                first = False
                yield chunk[start : start + UPLOAD_PIECE]


class FaultyLedger(_Proxy):
    def mark_sent(self, export_id: Any, **kwargs: Any) -> Any:
        self._plan.maybe_die("after_rename", str(export_id))
        return self._target.mark_sent(export_id, **kwargs)

    def mark_acked(self, export_id: Any, **kwargs: Any) -> Any:
        record = self._target.mark_acked(export_id, **kwargs)
        self._plan.maybe_die("after_ack_recorded", str(export_id))
        return record


def short_policies(seconds: dict[str, float]) -> Policies:
    """The production policies with the plan's timeouts, handed to the worker."""
    for name in seconds:
        if not isinstance(getattr(DEFAULT_POLICIES, name, None), timedelta):
            raise TypeError(f"Policies.{name} is not a timeout")
    # Retry backoff capped low too, so a retried step is not parked for a minute.
    cap = timedelta(seconds=2)
    return replace(
        DEFAULT_POLICIES,
        **{name: timedelta(seconds=value) for name, value in seconds.items()},
        ledger_retry=replace(DEFAULT_POLICIES.ledger_retry, maximum_interval=cap),
        deliver_retry=replace(DEFAULT_POLICIES.deliver_retry, maximum_interval=cap),
    )


def main() -> None:
    plan = Plan.from_env()
    build_real = worker.build_adapters

    def build_faulty(settings: Any) -> worker.Adapters:
        real = build_real(settings)
        faulty = worker.Adapters(
            ledger=FaultyLedger(real.ledger, plan),  # type: ignore[arg-type]
            store=FaultyStore(real.store, plan),  # type: ignore[arg-type]
            connectors=real.connectors,
        )
        return faulty

    worker.build_adapters = build_faulty  # type: ignore[assignment]
    real_move = Dropzone.move_ack

    def move_or_die(self: Dropzone, name: str, folder: Any) -> str:
        if folder == "processed":
            plan.maybe_die("before_ack_moved", name)
        return real_move(self, name, folder)

    Dropzone.move_ack = move_or_die  # type: ignore[method-assign]
    worker.main(policies=short_policies(plan.timeouts))


if __name__ == "__main__":
    main()
