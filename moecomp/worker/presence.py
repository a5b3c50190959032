"""The worker's own heartbeat: its main process says it is alive every ``heartbeat_s``, idle or busy.

It begins once Celery reports the worker ready (pool forked, consuming): a worker counts from the moment it
can take a job. Each beat also says what the worker runs on: its host, GPUs
(name, memory; none on a CPU host) and version (GET /v1/workers, the dashboard). A thread of the main process is
enough here (unlike a job's heartbeat, heartbeat.py): the main
process of a prefork worker runs no job, so nothing holds its GIL for long. A worker counts as alive while its
last beat is younger than ``stale_after_s`` (persistence/workers.py); a clean stop removes its row at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready

from moecomp import __version__
from moecomp.persistence import workers
from moecomp.persistence.database import Database
from moecomp.settings import Settings

log = logging.getLogger(__name__)
NODE_ENV = "MOECOMP_WORKER_NODE"  # set by the main process: its pool processes record it on the jobs they run


def host_name(settings: Settings) -> str:
    """The host a worker reports and its jobs record: ``settings.worker_host``, else the machine's name."""
    return settings.worker_host or socket.gethostname()


def gpus() -> list[dict[str, Any]]:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES), by name and memory; [] on a host without any.

    Asked of NVML, never of CUDA: the main process must not create a CUDA context before the pool forks.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library, no driver: a CPU host
        return []
    try:
        found = []
        for index in _visible(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            found.append({"name": name.decode() if isinstance(name, bytes) else name, "memory_bytes": int(memory)})
        return found
    except Exception:
        log.exception("could not list the GPUs")
        return []
    finally:
        pynvml.nvmlShutdown()


def _visible(count: int) -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    wanted = [d.strip() for d in visible.split(",") if d.strip()]
    return [int(d) for d in wanted if d.isdigit() and int(d) < count]


def report(settings: Settings) -> workers.Report:
    """What this worker says of itself at start and with every beat."""
    return workers.Report(host=host_name(settings), version=__version__, gpus=gpus())


def presence_name(pid: int | None = None) -> str:
    """The name of the worker whose main process is ``pid`` (default: this process) on this host."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


class Presence:
    """This worker's row in the workers table: beats from ``start`` in a daemon thread, removed by ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.name, self._stop = settings, presence_name(), threading.Event()
        self._started = False
        self.report = report(settings)

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
                    workers.beat(s, self.name, self.report)
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
