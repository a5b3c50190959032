"""serve's worker supervisor with real processes: a worker that dies is buried (its group killed, its presence row
removed) and started again after a growing backoff; stop() stops the worker and the supervising for good."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from moecomp.cli.supervisor import Backoff, WorkerSupervisor
from moecomp.persistence import workers
from moecomp.persistence.database import Database
from moecomp.persistence.migrate import upgrade
from moecomp.persistence.models import Worker
from moecomp.settings import Settings
from moecomp.worker.presence import presence_name


def test_backoff_doubles_while_workers_die_fast_and_starts_over_after_a_long_run() -> None:
    backoff = Backoff(first_s=1, most_s=8, healthy_after_s=60)
    assert [backoff.after(0.5) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert (backoff.after(120), backoff.after(1)) == (1, 2)


def _settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path)  # embedded: SQLite under tmp_path
    upgrade(settings.resolved_database_url)
    return settings


def test_a_worker_that_dies_at_once_is_buried_and_started_again_after_a_growing_backoff(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    db = Database(settings.resolved_database_url)
    started: list[tuple[float, int]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"], start_new_session=True)
        # Timed at the start: the beat's database write takes longer on a loaded machine and would shorten a gap.
        started.append((time.monotonic(), proc.pid))
        with db.session() as s:
            workers.beat(s, presence_name(proc.pid))  # as the worker would once ready
        return proc

    supervisor = WorkerSupervisor(settings, start)
    supervisor.backoff = Backoff(first_s=0.2, most_s=0.8)
    supervisor.start()
    deadline = time.monotonic() + 30
    while len(started) < 4:
        assert time.monotonic() < deadline, started
        time.sleep(0.05)
    supervisor.stop()
    count = len(started)
    time.sleep(1)
    with db.session() as s:
        rows = [w.name for w in s.query(Worker)]
    db.engine.dispose()

    assert len(started) == count  # stopped: nothing starts any more
    gaps = [b - a for (a, _), (b, _) in zip(started, started[1:], strict=False)]
    assert all(gap >= 0.2 + delay for gap, delay in zip(gaps, (0.2, 0.4, 0.8), strict=False)), gaps
    assert rows == [presence_name(started[-1][1])]  # the dead ones' rows are gone (the last was stopped, not dead)
    assert supervisor.restarts >= 3


def test_stop_ends_a_running_worker_without_a_restart(tmp_path: Path) -> None:
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(60)"
    supervisor = WorkerSupervisor(
        _settings(tmp_path), lambda: subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    )
    supervisor.start()
    deadline = time.monotonic() + 10
    while supervisor.proc is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # the child has installed its handler
    started = time.monotonic()
    supervisor.stop(grace_s=5)
    assert supervisor.proc.returncode == 0 and time.monotonic() - started < 5
    assert supervisor.restarts == 0
