"""The reaper: puts jobs whose worker died back on the queue, and re-sends jobs the broker lost.

It runs on worker start, every few seconds inside each worker's main process, and on API start.
Several reapers at once are harmless: each pass locks the rows it changes, and a job enqueued twice
runs once (the claim is atomic).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from celery import Celery

from moecomp.persistence import jobs
from moecomp.persistence.database import Database
from moecomp.settings import Settings
from moecomp.worker.broker import split_sqla_url
from moecomp.worker.queue import enqueue_job
from moecomp.worker.retention import SWEEP_EVERY_S, sweep_safely

log = logging.getLogger(__name__)


def reap_interval(settings: Settings) -> float:
    return min(10.0, max(0.5, settings.stale_after_s / 3))


def reap_once(settings: Settings, db: Database, celery_app: Celery) -> jobs.Reaped:
    """One pass: re-queue or fail stale running jobs, re-send lost queued ones, enqueue them."""
    with db.session() as s:
        reaped = jobs.reap_stale(
            s,
            stale_after_s=settings.stale_after_s,
            max_attempts=settings.max_attempts,
            time_limit_s=settings.job_time_limit_s,
            # A queued job not taken for this long may have lost its message (an API that died between
            # commit and send, a restarted Redis); a repeat is harmless, the claim is atomic.
            undelivered_after_s=settings.undelivered_after_s,
        )
    for job_id in reaped.requeue:
        enqueue_job(celery_app, job_id)
    if reaped.requeue or reaped.failed:
        log.warning("reaper: re-queued %s, failed %s", reaped.requeue, reaped.failed)
    _prune_sqlite_broker(settings)
    return reaped


def _prune_sqlite_broker(settings: Settings) -> None:
    """kombu's SQLAlchemy transport never deletes delivered rows, nor re-delivers them: drop them."""
    url, transport = split_sqla_url(settings.resolved_broker_url)
    if transport is None or not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        return
    with sqlite3.connect(path, timeout=30) as conn:
        try:
            conn.execute("DELETE FROM kombu_message WHERE visible = 0")
        except sqlite3.OperationalError:  # the transport has not created its tables yet
            pass
    conn.close()


def _loop(settings: Settings, celery_app: Celery, stop: threading.Event) -> None:
    db = Database(settings.resolved_database_url)
    # A prefork pool forks while this thread may hold a connection: children must not reuse (and on
    # exit close) the parent's sockets, so they drop the pool without closing it.
    os.register_at_fork(after_in_child=lambda: db.engine.dispose(close=False))
    next_sweep = time.monotonic() + SWEEP_EVERY_S
    while not stop.wait(reap_interval(settings)):
        try:
            reap_once(settings, db, celery_app)
        except Exception:  # a database or broker outage: keep reaping once it is back
            log.exception("reaper pass failed")
        if time.monotonic() >= next_sweep:
            sweep_safely(settings, db)
            next_sweep = time.monotonic() + SWEEP_EVERY_S


def start_reaper(settings: Settings, celery_app: Celery) -> threading.Event:
    """Reap (and sweep expired files, retention.py) now, then in a daemon thread; set the returned event to stop it."""
    db = Database(settings.resolved_database_url)
    try:
        reap_once(settings, db, celery_app)
    except Exception:  # the database or broker is still starting: the loop retries in a few seconds
        log.exception("start-up reaper pass failed")
    sweep_safely(settings, db)
    db.engine.dispose()
    stop = threading.Event()
    threading.Thread(target=_loop, args=(settings, celery_app, stop), name="moecomp-reaper", daemon=True).start()
    return stop
