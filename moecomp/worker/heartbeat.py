"""A daemon thread that renews a running job's heartbeat while the main thread computes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from moecomp.persistence import jobs
from moecomp.persistence.database import Database
from moecomp.persistence.jobs import Lease

log = logging.getLogger(__name__)


def _beat_loop(db: Database, lease: Lease, every_s: float, stop: threading.Event, on_lost: Callable[[], None]) -> None:
    while not stop.wait(every_s):
        try:
            with db.session() as s:
                alive = jobs.heartbeat(s, lease)
        except Exception:  # a database hiccup must not kill the job; the next beat retries
            log.exception("heartbeat of job %s failed", lease.job_id)
            continue
        if not alive:
            on_lost()
            return


@contextmanager
def heartbeating(db: Database, lease: Lease, every_s: float, on_lost: Callable[[], None]) -> Iterator[None]:
    """Beat every ``every_s`` seconds inside the block; ``on_lost`` runs once if the lease is gone."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_beat_loop, args=(db, lease, every_s, stop, on_lost), name=f"heartbeat-{lease.job_id}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)
