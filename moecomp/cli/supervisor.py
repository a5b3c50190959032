"""The worker that ``serve`` runs beside the API in the embedded mode, kept running: a new one when it dies.

At real size the kernel's OOM killer is a normal event on a GPU host, and it kills the largest process: the
worker. When the worker's main process is gone, what is left of its process group (pool and heartbeat
processes) is killed, its presence row removed (/readyz reports the missing worker at once), and a new worker
starts after a backoff: 1 s, doubling up to 60 s while workers keep dying within a minute of their start, so
that a worker that cannot start does not spin. The new worker's reaper re-queues the job that was running
once that job's heartbeat is ``stale_after_s`` old (reaper.py).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from moecomp.settings import Settings

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: the worker is still stopped on a normal exit of `serve`
        return None


def _die_with_parent(prctl: Callable[..., int] | None) -> None:
    """In the worker child: receive SIGTERM when `serve` dies, even by SIGKILL (Linux only).

    Linux sends it when the *thread* that started the child ends: the supervisor's thread, which lives until
    the worker is stopped. libc is loaded in the parent: a child forked from a threaded process must not dlopen.
    """
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_worker() -> subprocess.Popen[bytes]:
    """One worker process beside the API, in its own process group (stopped as a whole)."""
    cmd = [sys.executable, "-m", "moecomp.cli.main", "worker", "--concurrency", "1"]
    preexec = functools.partial(_die_with_parent, _prctl())
    return subprocess.Popen(cmd, preexec_fn=preexec, start_new_session=True)  # noqa: PLW1509


def stop_worker(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the worker's process group, SIGKILL it after ``grace_s``; a killed job is re-run later."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Backoff:
    """Seconds to wait before the next start: ``first_s``, doubling up to ``most_s`` while starts fail fast."""

    def __init__(self, first_s: float = 1.0, most_s: float = 60.0, healthy_after_s: float = 60.0) -> None:
        self.first_s, self.most_s, self.healthy_after_s = first_s, most_s, healthy_after_s
        self.delay_s = first_s

    def after(self, uptime_s: float) -> float:
        if uptime_s >= self.healthy_after_s:  # it ran for a while: this death is news, not a crash loop
            self.delay_s = self.first_s
        wait_s, self.delay_s = self.delay_s, min(self.delay_s * 2, self.most_s)
        return wait_s


def bury(settings: Settings, pid: int) -> None:
    """The worker whose main process was ``pid`` is dead: kill what is left of its group, forget its row."""
    from moecomp.persistence import workers
    from moecomp.persistence.database import Database
    from moecomp.worker.presence import presence_name

    try:
        os.killpg(pid, signal.SIGKILL)  # orphaned pool or heartbeat processes of the dead worker
    except ProcessLookupError:
        pass
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as s:
            workers.forget(s, presence_name(pid))
    except Exception as exc:  # its row goes silent anyway, and stops counting after stale_after_s
        print(f"moecomp: could not remove the dead worker's presence row ({exc})", file=sys.stderr, flush=True)
    finally:
        db.engine.dispose()


class WorkerSupervisor:
    """Starts the worker in a thread of its own and starts it again whenever it dies, until ``stop``."""

    def __init__(self, settings: Settings, start: Callable[[], subprocess.Popen[bytes]] = start_worker) -> None:
        self.settings, self._start = settings, start
        self.backoff = Backoff()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._lock, self._stopping = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="moecomp-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            self.proc = self._start()
            return self.proc

    def _run(self) -> None:
        while (proc := self._spawn()) is not None:
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            bury(self.settings, proc.pid)
            delay_s = self.backoff.after(time.monotonic() - started)
            self.restarts += 1
            why = f"signal {-code}" if code < 0 else f"exit status {code}"
            print(
                f"moecomp: the worker (pid {proc.pid}) died ({why}); a new one starts in {delay_s:g} s",
                file=sys.stderr,
                flush=True,
            )
            if self._stopping.wait(delay_s):
                return

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop supervising and stop the worker (SIGTERM, SIGKILL after ``grace_s``)."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None:
            stop_worker(proc, grace_s)
        self._thread.join(grace_s + 5)
