"""Helpers for tests that run the real service: processes in their own groups, ports, HTTP polling."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

MOECOMP = [sys.executable, "-m", "moecomp.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a moecomp process: only MOECOMP_* of our choosing, one torch thread.

    One, not two: CI's 2 cores run the library's tests beside these, and a 2-thread torch spin-waits at every
    parallel region for the thread that has no core (jobs took ~1.6x as long as on one thread)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOECOMP_")}
    env.update({"MOECOMP_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.update({f"MOECOMP_{k.upper()}": v for k, v in settings.items()})
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a moecomp command to completion; raise with its output if it failed."""
    done = subprocess.run([*MOECOMP, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"moecomp {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@contextmanager
def process(env: dict[str, str], *args: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running moecomp command in its own process group, SIGKILLed as a group at the end."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*MOECOMP, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def wait_ready(url: str, timeout: float = 60, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout} s\n{log.read_text() if log else ''}")


def wait_job(client: httpx.Client, job_id: str, until: Any, timeout: float = 60) -> dict[str, Any]:
    """Poll the job until ``until(job)`` holds; return it."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")


class RedisServer:
    """A redis-server of the test's own, without persistence: killing it loses every queued message.

    For tests that restart the broker; the shared Redis on 6379 is never touched.
    """

    def __init__(self, log: Path) -> None:
        self.port, self.log = free_port(), log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server on {self.port} did not start\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None
