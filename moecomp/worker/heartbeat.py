"""The heartbeat of a running job, renewed by a small process of its own beside the job's process.

A thread would share the job's GIL: a library call that holds it (safetensors holds it while it opens or
reads a file, for as long as a slow or hung disk takes) would silence the heartbeat, and the reaper would
re-queue a job that is still running, for a second attempt beside the first. The beat process needs no GIL
of ours. It stops as soon as the job's process is gone (killed at the hard time limit, crashed), so silence
still means a dead job; a stuck one is the hard time limit's business (tasks.py). A thread beats too, from the
first moment: the process takes a second or two to start on a busy machine.

Run as ``python -m moecomp.worker.heartbeat JOB WORKER ATTEMPT EVERY_S PARENT_PID`` with the database URL
in the environment (never on a command line that ``ps`` shows).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from moecomp.persistence import jobs
from moecomp.persistence.database import Database
from moecomp.persistence.jobs import Lease

log = logging.getLogger(__name__)

URL_ENV = "MOECOMP_HEARTBEAT_DATABASE_URL"
MODULE = "moecomp.worker.heartbeat"
LOST = 3  # exit status of the beat process: the lease is gone (the job was re-queued, or ended)
PARENT_POLL_S = 0.1


def renew(db: Database, lease: Lease) -> bool:
    """One beat; False once the lease is gone. A database hiccup counts as alive: the next beat retries."""
    try:
        with db.session() as s:
            return jobs.heartbeat(s, lease)
    except Exception:
        log.exception("heartbeat of job %s failed", lease.job_id)
        return True


def beat(db: Database, lease: Lease, every_s: float, parent: int) -> int:
    """Renew the lease every ``every_s`` while process ``parent`` lives; LOST once the lease is gone."""
    next_beat = time.monotonic()  # at once: the claim's beat is a process start-up old already
    while os.getppid() == parent:  # re-parented: the job's process died
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + every_s
            if not renew(db, lease):
                return LOST
        time.sleep(min(PARENT_POLL_S, every_s))
    return 0


def main(argv: list[str]) -> int:
    job_id, worker, attempt, every_s, parent = argv
    db = Database(os.environ[URL_ENV])
    try:
        return beat(db, Lease(job_id, worker, int(attempt)), float(every_s), int(parent))
    finally:
        db.engine.dispose()


def _watch(proc: subprocess.Popen[bytes], on_lost: Callable[[], None]) -> None:
    if proc.wait() == LOST:
        on_lost()


def _beat_thread(
    db: Database, lease: Lease, every_s: float, stop: threading.Event, on_lost: Callable[[], None]
) -> None:
    while not stop.wait(every_s):
        if not renew(db, lease):
            on_lost()
            return


@contextmanager
def heartbeating(db: Database, lease: Lease, every_s: float, on_lost: Callable[[], None]) -> Iterator[None]:
    """Beat every ``every_s`` seconds inside the block; ``on_lost`` (idempotent) runs if the lease is gone."""
    args = [lease.job_id, lease.worker, str(lease.attempt), str(every_s), str(os.getpid())]
    env = {**os.environ, URL_ENV: db.engine.url.render_as_string(hide_password=False)}
    proc = subprocess.Popen([sys.executable, "-m", MODULE, *args], env=env, stdin=subprocess.DEVNULL)
    stop = threading.Event()
    threads = [
        threading.Thread(target=_watch, args=(proc, on_lost), name=f"heartbeat-watch-{lease.job_id}", daemon=True),
        threading.Thread(
            target=_beat_thread, args=(db, lease, every_s, stop, on_lost), name=f"heartbeat-{lease.job_id}", daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for thread in threads:
            thread.join(every_s + 5)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main(sys.argv[1:]))
