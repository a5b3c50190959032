"""The worker's own heartbeat: its main process says it is alive every ``heartbeat_s``, idle or busy.

A thread of the main process is enough here (unlike a job's heartbeat, heartbeat.py): the main process of a
prefork worker runs no job, so nothing holds its GIL for long. A worker counts as alive while its last beat
is younger than ``stale_after_s`` (persistence/workers.py); a clean stop removes its row at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from moecomp.persistence import workers
from moecomp.persistence.database import Database
from moecomp.settings import Settings

log = logging.getLogger(__name__)


def presence_name(pid: int | None = None) -> str:
    """The name of the worker whose main process is ``pid`` (default: this process) on this host."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _beat_once(db: Database, name: str) -> None:
    try:
        with db.session() as s:
            workers.beat(s, name)
    except Exception:  # a database outage: the next beat retries
        log.exception("worker heartbeat failed")


def _loop(db: Database, name: str, every_s: float, stop: threading.Event) -> None:
    while True:
        _beat_once(db, name)
        if stop.wait(every_s):
            return


def start_presence(settings: Settings) -> threading.Event:
    """Beat now and then every ``heartbeat_s`` in a daemon thread; set the returned event to stop."""
    db = Database(settings.resolved_database_url)
    # Pool processes are forked from this one: they must not reuse (and on exit close) its connections.
    os.register_at_fork(after_in_child=lambda: db.engine.dispose(close=False))
    name, stop = presence_name(), threading.Event()
    _beat_once(db, name)
    threading.Thread(
        target=_loop, args=(db, name, settings.heartbeat_s, stop), name="moecomp-presence", daemon=True
    ).start()
    return stop


def stop_presence(settings: Settings, stop: threading.Event) -> None:
    """Stop beating and remove this worker's row: readiness sees at once that it is gone."""
    stop.set()
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as s:
            workers.forget(s, presence_name())
    except Exception:  # the row then goes silent and stops counting after stale_after_s
        log.exception("could not remove the worker's presence row")
    finally:
        db.engine.dispose()
