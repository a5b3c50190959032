"""The RunContext a job runs with: events into the database, progress throttled, cancel from a DB flag.

The library reports per-stage progress (layer i of n); the job shows one 0..1 figure. Each phase of
the job (compress, evaluate, artifacts) owns a slice of 0..1 and an expected number of stages; a new
stage name moves on by one, so the figure only ever grows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moecomp.compression.context import RunContext
from moecomp.persistence import jobs
from moecomp.persistence.database import Database
from moecomp.persistence.jobs import Lease
from moecomp.worker.db_retry import retrying
from moecomp.worker.errors import JobTimeout, LeaseLost

PROGRESS_EVERY_S = 0.5
CANCEL_POLL_S = 1.0


@dataclass
class Phase:
    start: float
    end: float
    stages: int
    seen: list[str] = field(default_factory=list)

    def fraction(self, stage: str, step: int, total: int) -> float:
        if stage not in self.seen:
            self.seen.append(stage)
        done = self.seen.index(stage) + (step / total if total else 1.0)
        return self.start + (self.end - self.start) * min(1.0, done / max(self.stages, len(self.seen)))


class JobReporter:
    """Sink and cancel check for one attempt of one job; also keeps a text log for the log artifact."""

    def __init__(self, db: Database, lease: Lease, deadline: float, clock: Callable[[], float] = time.monotonic):
        self.db, self.lease, self.deadline, self.clock = db, lease, deadline, clock
        self.phase = Phase(0.0, 1.0, 1)
        self.progress = 0.0
        self.log: list[str] = []
        self.lost = False  # set by the heartbeat when the lease is gone
        self._last_write: dict[str, float] = {}
        self._last_poll = float("-inf")
        self._cancel = False

    def context(self) -> RunContext:
        return RunContext(sink=self.sink, should_cancel=self.should_cancel)

    def begin_phase(self, start: float, end: float, stages: int) -> None:
        self.phase = Phase(start, end, stages)

    def sink(self, kind: str, stage: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            self._progress(stage, data)
            return
        level = str(data.get("level", "info")) if kind == "message" else "info"
        self.log.append(f"{time.strftime('%H:%M:%S')} {level:7} [{stage}] {kind}: {data}")
        self._append(kind, stage, data, level)

    def _append(self, kind: str, stage: str, data: dict[str, Any], level: str = "info") -> None:
        """Write one event, retried through a database outage; one key for all tries, so it is written once."""
        key = uuid.uuid4().hex

        def write() -> None:
            with self.db.session() as s:
                jobs.append_event(s, self.lease.job_id, kind, stage, data, level=level, dedup_key=key)

        retrying(write)

    def _progress(self, stage: str, data: dict[str, Any]) -> None:
        step, total = int(data.get("step", 0)), int(data.get("total", 0))
        self.progress = max(self.progress, self.phase.fraction(stage, step, total))
        now = self.clock()
        edge = step <= 1 or step >= total or stage not in self._last_write
        if not edge and now - self._last_write.get(stage, float("-inf")) < PROGRESS_EVERY_S:
            return  # throttled: at most a few writes a second, but always the first and last step
        self._last_write[stage] = now
        self._append("progress", stage, {**data, "job_progress": self.progress})
        if not retrying(lambda: self._set_progress(stage)):
            self.lost = True

    def _set_progress(self, stage: str) -> bool:
        with self.db.session() as s:
            return jobs.set_progress(s, self.lease, self.progress, stage)

    def should_cancel(self) -> bool:
        """True when the job must stop now; the reason is raised by ``raise_if_stopped``."""
        if self.lost or self.clock() > self.deadline:
            return True
        if self.clock() - self._last_poll >= CANCEL_POLL_S:
            self._last_poll = self.clock()
            self._cancel = retrying(self._cancel_requested)
        return self._cancel

    def _cancel_requested(self) -> bool:
        with self.db.session() as s:
            return jobs.cancel_requested(s, self.lease.job_id)

    def stop_reason(self) -> BaseException | None:
        """Why should_cancel said stop (checked when the library raised Cancelled): None means a request."""
        if self.lost:
            return LeaseLost()
        if self.clock() > self.deadline:
            return JobTimeout("the job ran past its time limit")
        return None

    def message(self, stage: str, text: str, level: str = "info") -> None:
        self.sink("message", stage, {"text": text, "level": level})
