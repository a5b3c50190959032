"""A worker SIGKILLed in each phase of a job: loading, a middle layer, evaluating, writing artifacts.

Two workers run; the one that claimed the job is frozen (SIGSTOP) the moment the job's events (or, for
artifacts, the checkpoint folder moved but its tar index not yet written) show the phase, checked again while
frozen, then SIGKILLed as a process group. The other worker's reaper re-queues the job and runs it: one final
state (succeeded), attempts == 2, one set of artifacts on disk and in the database, each served byte for byte as
recorded, and the dead attempt's half-written files are never listed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from moecomp.persistence.database import Database
from moecomp.persistence.models import JobEvent
from tests.faults.service import Service, events_of, runs_started
from tests.worker.procs import wait_job
from tests.worker.test_lifecycle import served_size_and_sha256

pytestmark = pytest.mark.slow

Event = tuple[str, str, dict]  # kind, stage, data
LOADING = {"worker", "plan", "load", "calibrate"}  # the attempt's message, its plan, the model and calibration data


def loading(events: list[Event], _: Path) -> bool:
    return bool(events) and all(stage in LOADING for _, stage, _ in events)


def mid_layer(events: list[Event], _: Path) -> bool:
    kind, stage, data = events[-1] if events else ("", "", {})
    return (kind, stage) == ("progress", "expert_drop") and 1 <= data["step"] < data["total"]


def evaluating(events: list[Event], _: Path) -> bool:
    kind, stage, _ = events[-1] if events else ("", "", {})
    return stage == "evaluate" and kind != "metrics"


INDEX = "checkpoint.tar.index.json"


def writing_artifacts(_: list[Event], attempt_dir: Path) -> bool:
    """The checkpoint folder is in the attempt's folder and its tar is being hashed: no index yet."""
    return (attempt_dir / "checkpoint").is_dir() and not (attempt_dir / INDEX).exists()


def evaluated(events: list[Event], _: Path) -> bool:
    """The last evaluation step is done: the artifacts are written a fraction of a second later."""
    return any(stage == "evaluate" and kind == "metrics" for kind, stage, _ in events) or any(
        stage == "evaluate" and kind == "progress" and data["step"] == data["total"] for kind, stage, data in events
    )


class Watcher:
    """Reads the job's events straight from the database, to react within a few milliseconds."""

    def __init__(self, database_url: str, job_id: str, attempt_dir: Path) -> None:
        self.db, self.job_id, self.attempt_dir = Database(database_url), job_id, attempt_dir

    def events(self) -> list[Event]:
        query = select(JobEvent).where(JobEvent.job_id == self.job_id).order_by(JobEvent.seq)
        with self.db.session() as s:
            return [(e.kind, e.stage or "", e.data) for e in s.scalars(query)]

    def wait(self, holds: Callable[[list[Event], Path], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not holds(self.events(), self.attempt_dir):
            assert time.monotonic() < deadline, f"never got there: {self.events()[-3:]}"
            time.sleep(0.02)


@contextmanager
def frozen(pgid: int) -> Iterator[None]:
    os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pgid, signal.SIGCONT)


def step_until(pgid: int, watcher: Watcher, holds: Callable[[list[Event], Path], bool], timeout: float = 30) -> None:
    """Let the frozen group run in slices of a few milliseconds until ``holds``; it is frozen on return.

    For a phase too short to be caught by polling alone (hashing a 10 MB checkpoint takes a few tens of ms).
    """
    deadline = time.monotonic() + timeout
    while not holds([], watcher.attempt_dir):
        assert time.monotonic() < deadline, "the phase never came"
        assert not (watcher.attempt_dir / INDEX).exists(), "stepped past the phase"
        os.killpg(pgid, signal.SIGCONT)
        time.sleep(0.003)
        os.killpg(pgid, signal.SIGSTOP)


def kill_in_phase(phase: str, watcher: Watcher, pgid: int) -> list[Event]:
    """Freeze the worker group in ``phase``, check it is still there while frozen, SIGKILL it; returns the events."""
    check = {"loading": loading, "layer": mid_layer, "evaluating": evaluating, "artifacts": writing_artifacts}[phase]
    watcher.wait(evaluated if phase == "artifacts" else check)
    with frozen(pgid):
        if phase == "artifacts":
            step_until(pgid, watcher, check)
        time.sleep(0.3)  # a commit already on its way lands; nothing after it can
        events = watcher.events()
        assert check(events, watcher.attempt_dir), f"the worker left the {phase} phase: {events[-3:]}"
        os.killpg(pgid, signal.SIGKILL)
    return events


def pgid_of(worker: str) -> int:
    """The process group of the worker that claimed a job (its pool process is ``host:pid``)."""
    return os.getpgid(int(worker.rsplit(":", 1)[1]))


def served_sha256(client: httpx.Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return hashlib.sha256(response.content).hexdigest()


@pytest.mark.parametrize("phase", ["loading", "layer", "evaluating", "artifacts"])
def test_a_worker_killed_in_each_phase_leaves_one_final_job_with_one_set_of_artifacts(
    service: Service, tiny_mixtral_dir: Path, phase: str
):
    service.start_api()
    service.worker("worker1")
    service.worker("worker2")  # idle until the reaper puts the job back on the queue
    job_dir = service.tmp / "data" / "artifacts"
    with service.client(timeout=30) as client:
        job_id = service.submit(client, tiny_mixtral_dir)
        job_dir /= job_id
        watcher = Watcher(service.database_url, job_id, job_dir / "1")
        running = wait_job(client, job_id, lambda j: j["status"] == "running", timeout=120)
        killed_at = kill_in_phase(phase, watcher, pgid_of(running["worker"]))
        # The dead attempt's files are on disk (a temporary name when killed mid-write); none is listed.
        partial = sorted(p.name for p in (job_dir / "1").iterdir()) if (job_dir / "1").is_dir() else []
        listed_meanwhile = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]

        job = wait_job(client, job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout=180)
        artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        served = {a["name"]: served_sha256(client, a["url"]) for a in artifacts}
        events = events_of(client, job_id)
    watcher.db.engine.dispose()

    assert (job["status"], job["attempts"]) == ("succeeded", 2), (job, killed_at[-3:], service.logs())
    assert len(runs_started(events)) == 2
    if phase == "artifacts":
        assert "checkpoint" in partial and INDEX not in partial, partial
    assert listed_meanwhile == []
    names = sorted(a["name"] for a in artifacts)
    assert len({a["kind"] for a in artifacts}) == len(artifacts) and "checkpoint.tar" in names  # one set
    assert sorted(p.name for p in job_dir.iterdir()) == ["2"]  # the first attempt's folder is gone
    on_disk_names = {INDEX: "checkpoint.tar", "checkpoint": None}
    kept = sorted(filter(None, (on_disk_names.get(p.name, p.name) for p in (job_dir / "2").iterdir())))
    assert kept == names  # no temporary file left either; the checkpoint is its folder and the folder's tar index
    assert not any((service.tmp / "data" / "work").iterdir())  # nor the dead attempt's working folder
    for a in artifacts:
        on_disk = served_size_and_sha256(job_dir / "2" / (INDEX if a["name"] == "checkpoint.tar" else a["name"]))[1]
        assert served[a["name"]] == a["sha256"] == on_disk, a["name"]
