"""`moecomp serve` (embedded mode) keeps its worker: a new one after the whole worker tree is SIGKILLed.

At real size the kernel's OOM killer is a normal event on a GPU host, and it kills the largest process: the
worker. One serve process; its worker's tree (main process, pool and heartbeat processes, found as serve's
descendants) is SIGKILLed twice: idle before any job, then in the middle of a job. Each time /readyz is 503
naming the missing worker until a new one beats, the killed job is re-run by the new worker's reaper, a job
submitted while no worker lived runs too, and serve itself is never restarted.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.faults.service import EVALUATION
from tests.worker.procs import free_port, process, service_env, wait_job, wait_ready

pytestmark = pytest.mark.slow

# Small jobs: worker start-ups (torch and transformers imported before the pool forks) take most of the time.
RECIPE = {"stages": [{"method": "expert_drop", "keep": 4}], "calibration": {"samples": 8, "seq_len": 128}}
QUICK = {"stages": []}
QUICK_EVALUATION = {**EVALUATION, "max_tokens": 1024}
FINAL = ("succeeded", "failed", "cancelled")
MISSING = "no worker is alive: none has sent a heartbeat in the last 6 s"


def kill_worker_tree(serve: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL serve's worker and every process under it; returns their pids."""
    [worker] = psutil.Process(serve.pid).children()
    tree = [worker, *worker.children(recursive=True)]
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return [proc.pid for proc in tree]


def readiness_through_restart(client: httpx.Client, timeout: float = 60) -> tuple[list[str], float]:
    """Poll /readyz after a kill: the reasons of the first 503, and the seconds until it is 200 again."""
    started, reasons = time.monotonic(), None
    while time.monotonic() - started < timeout:
        response = client.get("/readyz")
        if response.status_code == 503 and reasons is None:
            reasons = response.json()["reasons"]
        if response.status_code == 200 and reasons is not None:
            return reasons, time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"/readyz never went 503 then 200 in {timeout} s (reasons seen: {reasons})")


def submit(client: httpx.Client, model: Path, recipe: dict, evaluation: dict) -> str:
    body = {"model": {"kind": "local", "path": str(model)}, "recipe": recipe, "evaluation": evaluation}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_serve_starts_a_new_worker_after_the_tree_is_killed_idle_and_mid_job(tmp_path: Path, tiny_mixtral_dir: Path):
    port, log = free_port(), tmp_path / "serve.log"
    env = service_env(tmp_path / "data", heartbeat_s="0.5", stale_after_s="6", device="cpu")
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with process(env, "serve", "--port", str(port), log=log) as serve:
        wait_ready(url, timeout=90, log=log)  # embedded: ready once its worker beats
        ready_s = time.monotonic() - t0
        key_file = tmp_path / "data" / "local-key"  # serve made it, readable by its owner only
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            idle_killed = kill_worker_tree(serve)
            idle_reasons, idle_back_s = readiness_through_restart(client)

            first = submit(client, tiny_mixtral_dir, RECIPE, QUICK_EVALUATION)
            wait_job(client, first, lambda j: j["status"] == "running" and j["progress"] > 0, timeout=90)
            busy_killed = kill_worker_tree(serve)
            killed_s = time.monotonic() - t0
            second = submit(client, tiny_mixtral_dir, QUICK, QUICK_EVALUATION)  # no worker lives now
            busy_reasons, busy_back_s = readiness_through_restart(client)
            jobs = [wait_job(client, j, lambda j: j["status"] in FINAL, timeout=120) for j in (first, second)]
            metrics = client.get("/metrics").text
            done_s = time.monotonic() - t0
        assert serve.poll() is None, log.read_text()  # the same serve all along
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0, log.read_text()

    assert len(idle_killed) >= 2 and len(busy_killed) >= 3  # main + pool (+ the job's heartbeat process)
    assert idle_reasons == busy_reasons == [MISSING]
    assert [(j["status"], j["attempts"]) for j in jobs] == [("succeeded", 2), ("succeeded", 1)], log.read_text()
    assert "moecomp_workers_alive 1.0" in metrics
    assert log.read_text().count("moecomp: the worker (pid") == 2
    print(
        f"ready at {ready_s:.1f} s; readyz back {idle_back_s:.1f} s after the idle kill; mid-job kill at"
        f" {killed_s:.1f} s, readyz back {busy_back_s:.1f} s later; both jobs done at {done_s:.1f} s"
    )
