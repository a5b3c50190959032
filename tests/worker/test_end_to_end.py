"""The real service: API and worker as separate processes on PostgreSQL + Redis.

A job is submitted, watched and downloaded through the `moecomp` CLI, the way a person does it. The embedded mode
(`serve` with its own worker) runs jobs in tests/faults/test_serve_worker_restart.py and the dashboard's tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from tests.worker.procs import cli, free_port, kill_group, process, service_env, wait_job, wait_ready

pytestmark = pytest.mark.slow

SMALL_EVAL = {"perplexity": ["bundled:heldout"], "seq_len": 128, "max_tokens": 4096, "fidelity": False}


def write_request(tmp_path: Path, recipe: dict, evaluation: dict) -> tuple[Path, Path]:
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    return tmp_path / "recipe.json", tmp_path / "evaluation.json"


def watch_and_download(env: dict[str, str], tmp_path: Path, job_id: str) -> None:
    """`moecomp watch` follows the job to its end; `moecomp download` fetches the checkpoint the API lists."""
    watched = cli(env, "watch", job_id, timeout=180)
    assert "succeeded" in watched.stdout
    out = tmp_path / "checkpoint.tar"
    cli(env, "download", job_id, "--out", str(out))
    with httpx.Client(base_url=env["MOECOMP_URL"], headers={"Authorization": f"Bearer {env['MOECOMP_KEY']}"}) as c:
        listed = {a["kind"]: a for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]}
    assert hashlib.sha256(out.read_bytes()).hexdigest() == listed["checkpoint"]["sha256"]


@pytest.fixture
def distributed(tmp_path: Path, postgres_url: str, redis_url: str):
    """Migrated PostgreSQL, a key, and the API (`moecomp serve`, not embedded: no worker of its own)."""
    port = free_port()
    # A queue of its own: other test runs may share this Redis database and run workers on it.
    queue = f"moecomp-{uuid.uuid4().hex[:8]}"
    env = service_env(
        tmp_path / "data",
        database_url=postgres_url,
        broker_url=redis_url,
        heartbeat_s="0.5",
        stale_after_s="3",
        queue=queue,
    )
    cli(env, "admin", "migrate")
    env["MOECOMP_KEY"] = cli(env, "admin", "create-key", "--team", "e2e").stdout.strip()
    env["MOECOMP_URL"] = f"http://127.0.0.1:{port}"
    with process(env, "serve", "--port", str(port), log=tmp_path / "api.log"):
        wait_ready(env["MOECOMP_URL"], log=tmp_path / "api.log")
        yield env


def test_kill_9_of_the_worker_reruns_the_job_exactly_once(distributed, tmp_path, tiny_mixtral_dir):
    """Also the plain path (one test, not two: each starts the API and workers): a job submitted through the CLI
    runs on a worker process, and `watch` and `download` follow it to its checkpoint."""
    recipe, spec = write_request(tmp_path, {"stages": []}, SMALL_EVAL)
    args = ["--model", str(tiny_mixtral_dir), "--recipe", str(recipe), "--evaluation", str(spec)]
    job_id = cli(distributed, "submit", *args).stdout.strip()
    auth = {"Authorization": f"Bearer {distributed['MOECOMP_KEY']}"}
    with httpx.Client(base_url=distributed["MOECOMP_URL"], headers=auth) as client:
        with process(distributed, "worker", log=tmp_path / "worker1.log") as first:
            # Killed at its first progress report: the model is loaded, nothing is written yet.
            wait_job(client, job_id, lambda j: j["status"] == "running" and j["progress"] > 0, timeout=90)
            os.killpg(first.pid, signal.SIGKILL)  # the whole worker: main process and pool child
            kill_group(first)
        with process(distributed, "worker", log=tmp_path / "worker2.log"):
            watch_and_download(distributed, tmp_path, job_id)
        job = client.get(f"/v1/jobs/{job_id}").json()
        artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    assert (job["status"], job["attempts"]) == ("succeeded", 2), job
    kinds = sorted(a["kind"] for a in artifacts)
    assert kinds == sorted(set(kinds)) and "checkpoint" in kinds  # one set, no duplicates from attempt 1
    job_dir = tmp_path / "data" / "artifacts" / job_id
    assert [p.name for p in job_dir.iterdir()] == ["2"]
    assert sum(e["data"].get("text", "").startswith("job succeeded") for e in events) == 1
    assert any("lost during attempt 1" in e["data"].get("text", "") for e in events)
