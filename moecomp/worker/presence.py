"""The worker's own heartbeat: its main process says it is alive every ``heartbeat_s``, idle or busy.

It begins once Celery reports the worker ready (pool forked, consuming): a worker counts from the moment it
can take a job. A thread of the main process is enough here (unlike a job's heartbeat, heartbeat.py): the main
process of a prefork worker runs no job, so nothing holds its GIL for long. A worker counts as alive while its
last beat is younger than ``stale_after_s`` (persistence/workers.py); a clean stop removes its row at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery.signals import worker_ready

from moecomp.persistence import workers
from moecomp.persistence.database import Database
from moecomp.settings import Settings

log = logging.getLogger(__name__)


def presence_name(pid: int | None = None) -> str:
    """The name of the worker whose main process is ``pid`` (default: this process) on this host."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


class Presence:
    """This worker's row in the workers table: beats from ``start`` in a daemon thread, removed by ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.name, self._stop = settings, presence_name(), threading.Event()
        self._started = False

    def start(self, **_: object) -> None:
        if self._started:  # Celery says ready again after each reconnection to the broker
            return
        self._started = True
        db = Database(self.settings.resolved_database_url)
        # Pool processes are forked from this one: they must not reuse (and on exit close) its connections.
        os.register_at_fork(after_in_child=lambda: db.engine.dispose(close=False))
        threading.Thread(target=self._loop, args=(db,), name="moecomp-presence", daemon=True).start()

    def start_when_ready(self) -> None:
        """Start once Celery reports this worker ready (the ``worker_ready`` signal)."""
        worker_ready.connect(self.start, weak=False)

    def _loop(self, db: Database) -> None:
        while True:
            try:
                with db.session() as s:
                    workers.beat(s, self.name)
            except Exception:  # a database outage: the next beat retries
                log.exception("worker heartbeat failed")
            if self._stop.wait(self.settings.heartbeat_s):
                return

    def stop(self) -> None:
        """Stop beating and remove the row: readiness sees at once that this worker is gone."""
        self._stop.set()
        db = Database(self.settings.resolved_database_url)
        try:
            with db.session() as s:
                workers.forget(s, self.name)
        except Exception:  # the row then goes silent and stops counting after stale_after_s
            log.exception("could not remove the worker's presence row")
        finally:
            db.engine.dispose()
