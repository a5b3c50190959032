"""Time and disk limits with real processes: the hard time limit of a job stuck inside one step, and a full disk.

The API and a worker run as processes on PostgreSQL and Redis. A stuck step is a checkpoint read that never
returns (the model's weights file is a FIFO nobody writes: like a hung network file system); the Celery hard
time limit kills the pool process and the reaper fails the job with `timeout`. A full disk is a real tmpfs
mounted small (we run as root here and in CI; a failing mount fails the test, it never skips).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from moecomp.assets import MODELS
from moecomp.persistence.database import Database
from moecomp.persistence.models import Artifact, JobStatus
from moecomp.settings import Settings
from moecomp.worker.lifecycle import run_job_once
from moecomp.worker.reporter import JobReporter
from moecomp.worker.runner import JobInput, JobOutput
from tests.tmpfs import tmpfs
from tests.worker.helpers import get_job
from tests.worker.procs import cli, free_port, process, service_env, wait_job, wait_ready

pytestmark = pytest.mark.slow

FINAL = ("succeeded", "failed", "cancelled")
NO_EVAL = {"perplexity": [], "fidelity": False}
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


@contextmanager
def service(tmp_path: Path, postgres_url: str, redis_url: str, **settings: str) -> Iterator[httpx.Client]:
    """A migrated database, a key, the API and one worker as processes; yields a client with the key."""
    port = free_port()
    roots = json.dumps([str(MODELS), str(tmp_path / "models")])
    queue = f"moecomp-{uuid.uuid4().hex[:8]}"  # others' test runs may share this Redis database
    env = service_env(
        tmp_path / "data", database_url=postgres_url, broker_url=redis_url, queue=queue, allowed_model_roots=roots
    )
    env.update({f"MOECOMP_{k.upper()}": v for k, v in settings.items()})
    cli(env, "admin", "migrate")
    key = cli(env, "admin", "create-key", "--team", "limits").stdout.strip()
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        stack.enter_context(process(env, "serve", "--port", str(port), log=tmp_path / "api.log"))
        stack.enter_context(process(env, "worker", log=tmp_path / "worker.log"))
        wait_ready(url, log=tmp_path / "api.log")
        yield stack.enter_context(httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30))


def submit(client: httpx.Client, model: Path) -> str:
    body = {"model": {"kind": "local", "path": str(model)}, "recipe": {"stages": []}, "evaluation": NO_EVAL}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def hung_model(folder: Path) -> Path:
    """The tiny model's config and tokenizer, with a weights file whose reads block forever (a FIFO)."""
    folder.mkdir(parents=True)
    for name in SIDE_FILES:
        shutil.copy(MODELS / "tiny-mixtral" / name, folder / name)
    os.mkfifo(folder / "model.safetensors")
    return folder


def messages(client: httpx.Client, job_id: str) -> list[str]:
    items = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    return [e["data"].get("text", "") for e in items if e["kind"] == "message"]


def test_job_stuck_inside_one_step_is_killed_at_the_hard_limit_and_fails_with_timeout(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    hung = hung_model(tmp_path / "models" / "hung")
    # stale_after_s leaves room for the heartbeat process to start on a busy machine (production: 30 s).
    # The limit leaves the job queued behind the stuck one (a re-export, ~2 s here) a few times what it needs.
    limits = {"job_time_limit_s": "8", "time_limit_grace_s": "1", "heartbeat_s": "0.5", "stale_after_s": "5"}
    with service(tmp_path, postgres_url, redis_url, **limits) as client:
        stuck = submit(client, hung)
        after = submit(client, MODELS / "tiny-mixtral")  # queued behind the stuck job (one pool process)
        job = wait_job(client, stuck, lambda j: j["status"] in FINAL, timeout=60)
        assert wait_job(client, after, lambda j: j["status"] in FINAL, timeout=90)["status"] == "succeeded"
        time.sleep(3)  # a late reaper pass or a re-delivery would show here as another attempt or state
        again = client.get(f"/v1/jobs/{stuck}").json()
        texts = messages(client, stuck)
    assert (job["status"], job["error"]["code"], job["attempts"]) == ("failed", "timeout", 1), texts
    assert (again["status"], again["attempts"], again["finished_at"]) == ("failed", 1, job["finished_at"])
    # The Rust reader blocked on the FIFO holds the GIL; the heartbeat beats from a process of its own, so the
    # reaper never takes the stuck job for a dead one (no "lost" attempt): it ends once, after the kill.
    assert not any("lost" in t for t in texts), texts
    assert sum("longer than its limit" in t for t in texts) == 1, texts
    assert "Hard time limit (9.0s) exceeded" in (tmp_path / "worker.log").read_text()


def grow(path: Path, size: str) -> None:
    """Space is back: the same tmpfs, larger."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def files_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def body_writing(weights_mib: float, report_mib: float) -> Callable[..., JobOutput]:
    """A job body with a checkpoint of ``weights_mib`` and a report file of ``report_mib`` (random bytes)."""

    def body(inp: JobInput, workdir: Path, reporter: JobReporter, device: str, cache: Path) -> JobOutput:
        checkpoint, report = workdir / "checkpoint", workdir / "report" / "report.json"
        checkpoint.mkdir(parents=True)
        report.parent.mkdir()
        (checkpoint / "model.safetensors").write_bytes(os.urandom(int(weights_mib * 2**20)))
        (checkpoint / "moecomp.json").write_text('{"schema": "moecomp.manifest/1"}')
        report.write_bytes(os.urandom(int(report_mib * 2**20)))
        return JobOutput(checkpoint=checkpoint, manifest={}, report_files=[report])

    return body


# On a 2 MiB disk: the checkpoint itself does not fit; or it fits and the report after it does not (then the
# checkpoint already written is removed too: an incomplete set is no use, and the space is what is missing).
@pytest.mark.parametrize(
    ("weights_mib", "report_mib", "failed_file"), [(3, 0, "checkpoint"), (1.2, 1.2, "report.json")]
)
def test_full_artifacts_disk_fails_the_job_with_disk_full_and_keeps_no_partial_file(
    weights_mib: float,
    report_mib: float,
    failed_file: str,
    settings: Settings,
    db: Database,
    make_job: Callable[..., str],
) -> None:
    with tmpfs(settings.artifacts_dir, "2m") as disk:
        full = make_job()
        run_job_once(settings, full, body=body_writing(weights_mib, report_mib))
        job = get_job(db, full)
        assert (job.status, job.error_code) == (JobStatus.failed, "disk_full"), job.error_message
        assert f"writing {disk / full / '1' / failed_file} (" in job.error_message
        assert "MiB free on that file system" in job.error_message
        assert files_under(disk) == ["job.log"]  # no partial file, no temporary name, no orphaned checkpoint
        with db.session() as s:
            assert [a.kind for a in s.query(Artifact).filter_by(job_id=full)] == ["log"]
        assert not any((settings.data_dir / "work").iterdir())
        grow(disk, "16m")
        after = make_job()
        run_job_once(settings, after, body=body_writing(weights_mib, report_mib))
        assert get_job(db, after).status == JobStatus.succeeded
        assert {"checkpoint.tar.index.json", "report.json", "job.log"} <= set(files_under(disk / after))


def model_tar(size: int) -> bytes:
    """A model folder as a tar: the tiny model's config and ``size`` bytes of weights."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in (
            ("config.json", (MODELS / "tiny-mixtral" / "config.json").read_bytes()),
            ("w", os.urandom(size)),
        ):
            info = tarfile.TarInfo(f"m/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_full_data_disk_fails_the_job_and_the_upload_and_the_service_stays_up(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    with tmpfs(tmp_path / "data", "2m") as disk, service(tmp_path, postgres_url, redis_url) as client:
        full = submit(client, MODELS / "tiny-mixtral")  # its 17 MiB checkpoint cannot be exported here
        job = wait_job(client, full, lambda j: j["status"] in FINAL, timeout=120)
        assert (job["status"], job["error"]["code"]) == ("failed", "disk_full"), job["error"]
        # Refused by the plan before any work (tests/worker/test_planning_refusals.py), with the numbers.
        message = job["error"]["message"]
        assert f"not enough disk space: this job needs 0.019 GiB on the file system of {disk} (" in message
        upload = client.post("/v1/models", content=model_tar(3 * 2**20), headers={"Content-Type": "application/x-tar"})
        assert upload.status_code == 507 and "disk is full" in upload.json()["detail"]
        assert "507" in client.get("/openapi.json").json()["paths"]["/v1/models"]["post"]["responses"]
        assert files_under(disk) == ["job.log"]  # no checkpoint shard, no half upload
        assert client.get("/readyz").status_code == 200
        grow(disk, "64m")
        after = submit(client, MODELS / "tiny-mixtral")
        assert wait_job(client, after, lambda j: j["status"] in FINAL, timeout=120)["status"] == "succeeded"
