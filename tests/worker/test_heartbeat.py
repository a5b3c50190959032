"""The heartbeat goes on while the job's process holds the GIL, and stops when that process dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from safetensors import SafetensorError, safe_open

from moecomp.persistence import jobs
from moecomp.persistence.database import Database
from moecomp.persistence.models import Job
from moecomp.worker.heartbeat import heartbeating
from tests.worker.helpers import get_job

HOLD_S = 3.0


def claimed(db: Database, job_id: str) -> jobs.Lease:
    with db.session() as s:
        lease = jobs.claim(s, job_id, "w", 30, 3)
    assert lease is not None
    return lease


def test_heartbeat_goes_on_while_a_library_call_holds_the_gil(db: Database, make_job, tmp_path: Path) -> None:
    lease = claimed(db, make_job())
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    with heartbeating(db, lease, 0.2, on_lost=lambda: None):
        time.sleep(1.5)  # the beat process has started and beaten
        before = get_job(db, lease.job_id).heartbeat_at
        # safetensors opens the file holding the GIL: blocked until a writer comes, HOLD_S later.
        subprocess.Popen(["sh", "-c", f"sleep {HOLD_S}; printf garbage > {fifo}"])
        try:
            safe_open(str(fifo), "pt")
        except (SafetensorError, OSError):  # a FIFO cannot be mapped: it blocked, then failed
            pass
        held = get_job(db, lease.job_id).heartbeat_at
    assert before is not None and held is not None
    assert (held - before).total_seconds() > HOLD_S - 1  # it kept beating while this process was stuck


def test_heartbeat_stops_with_the_jobs_process_and_reports_a_lost_lease(db: Database, make_job, settings) -> None:
    lease = claimed(db, make_job())
    # The job's process is a child here, killed with SIGKILL as the pool kills at the hard time limit.
    code = (
        "import sys, time; from moecomp.persistence.database import Database; "
        "from moecomp.persistence.jobs import Lease; from moecomp.worker.heartbeat import heartbeating; "
        f"db = Database({settings.resolved_database_url!r}); "
        f"lease = Lease({lease.job_id!r}, {lease.worker!r}, {lease.attempt}); "
        "cm = heartbeating(db, lease, 0.2, on_lost=lambda: None); cm.__enter__(); time.sleep(60)"
    )
    job_process = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(3)
    job_process.kill()
    job_process.wait()
    time.sleep(1)  # the beat process notices within PARENT_POLL_S
    last = get_job(db, lease.job_id).heartbeat_at
    time.sleep(1.5)
    assert get_job(db, lease.job_id).heartbeat_at == last
    lost: list[bool] = []
    with heartbeating(db, lease, 0.2, on_lost=lambda: lost.append(True)):
        with db.session() as s:  # the reaper re-queued the job meanwhile
            s.query(Job).filter_by(id=lease.job_id).update({"worker": None, "status": "queued"})
            s.commit()
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.1)
    assert lost, "on_lost never ran"  # from the thread, the process or both: it only sets a flag
