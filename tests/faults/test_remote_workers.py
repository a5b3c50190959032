"""Workers on other hosts: they share PostgreSQL, Redis and the API's HTTP with the API, never a folder.

The API (`moecomp serve`, its own data folder) and workers started with ``api_url`` and a worker credential, each
with a data folder of its own (here on loopback: separate folders, separate host names). Inputs and artifacts move
over HTTP: an uploaded model is fetched by the worker that runs it, every artifact is sent back to the API's store,
and every artifact downloads from the API with the sha256 it was recorded with.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from moecomp import __version__
from moecomp.persistence.database import Database
from moecomp.persistence.service_keys import Role, create_service_key
from moecomp.settings import Settings
from moecomp.worker.remote import ApiClient
from tests.faults.service import Service, events_of, runs_started
from tests.faults.test_worker_kills import frozen, pgid_of
from tests.worker.procs import kill_group, wait_job

pytestmark = pytest.mark.slow

RECIPE = {"stages": [{"method": "expert_drop", "keep": 4}], "calibration": {"samples": 8, "seq_len": 64}}
EVALUATION = {"perplexity": ["bundled:heldout"], "seq_len": 64, "max_tokens": 512, "fidelity": False}
CHUNK = 64 * 1024  # small chunks: the checkpoint (~10 MB) goes in ~150 requests, slow enough to be caught


def _service_key(service: Service, role: Role = Role.worker) -> str:
    db = Database(service.database_url)
    try:
        with db.session() as s:
            return create_service_key(s, role, "remote hosts")
    finally:
        db.engine.dispose()


def remote_worker(service: Service, host: str, key: str, **settings: str) -> subprocess.Popen[bytes]:
    """A worker as on another host: its own data folder, the API by URL."""
    return service.start(
        "worker",
        "--concurrency",
        "1",
        "--hostname",
        f"{host}@remote",
        log=f"{host}.log",
        data_dir=str(service.tmp / host),
        api_url=service.url,
        worker_key=key,
        worker_host=host,
        **settings,
    )


def submit(client: httpx.Client, model: dict) -> str:
    response = client.post("/v1/jobs", json={"model": model, "recipe": RECIPE, "evaluation": EVALUATION})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def upload(client: httpx.Client, folder: Path) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname="tiny")
    response = client.post("/v1/models", content=buffer.getvalue(), headers={"Content-Type": "application/x-tar"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def served(client: httpx.Client, job_id: str) -> dict[str, tuple[str, str]]:
    """Each artifact's name: (the sha256 recorded, the sha256 of the bytes the API serves)."""
    out = {}
    for artifact in client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]:
        response = client.get(artifact["url"])
        assert response.status_code == 200, response.text
        out[artifact["name"]] = (artifact["sha256"], hashlib.sha256(response.content).hexdigest())
    return out


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_an_upload_and_a_local_model_run_on_two_remote_workers_and_download_from_the_api(
    service: Service, tiny_mixtral_dir: Path
) -> None:
    key = _service_key(service)
    service.start_api()
    api_data = service.tmp / "data"
    with service.client(timeout=60) as client:
        host_a = remote_worker(service, "host-a", key)
        uploaded = submit(client, {"kind": "upload", "upload_id": upload(client, tiny_mixtral_dir)})
        first = wait_job(client, uploaded, lambda j: j["status"] in ("succeeded", "failed"), timeout=240)
        assert (first["status"], first["host"]) == ("succeeded", "host-a"), (first, service.logs())
        kill_group(host_a)  # host-a goes away (gone once this returns: it takes no message): host-b runs the next job
        remote_worker(service, "host-b", key)
        local = submit(client, {"kind": "local", "path": str(tiny_mixtral_dir)})
        second = wait_job(client, local, lambda j: j["status"] in ("succeeded", "failed"), timeout=240)
        assert (second["status"], second["host"]) == ("succeeded", "host-b"), (second, service.logs())
        results = {job_id: served(client, job_id) for job_id in (uploaded, local)}
        admin = {"Authorization": f"Bearer {_service_key(service, Role.admin)}"}
        registry = {w["host"]: w for w in client.get("/v1/workers", headers=admin).json()["items"]}
    assert registry["host-b"]["alive"] and registry["host-b"]["gpus"] == []  # this machine has no GPU
    assert registry["host-a"]["version"] == registry["host-b"]["version"] == __version__
    for job_id, artifacts in results.items():
        assert {"checkpoint.tar", "moecomp.json", "README.md", "job.log"} <= set(artifacts), artifacts
        assert all(recorded == got for recorded, got in artifacts.values()), (job_id, artifacts)
        # The API's store holds exactly what was recorded, and nothing half-sent.
        assert files_under(api_data / "artifacts" / job_id) == sorted(f"1/{name}" for name in artifacts)
    # Each worker kept to its own folder: host-a cached the upload it fetched; neither has artifacts of its own.
    [cached] = (service.tmp / "host-a" / "cache" / "uploads").glob("*/model")
    for name in ("config.json", "model.safetensors"):
        assert (cached / name).read_bytes() == (tiny_mixtral_dir / name).read_bytes()
    assert not (service.tmp / "host-b" / "cache" / "uploads").exists()
    for host in ("host-a", "host-b"):
        assert files_under(service.tmp / host / "artifacts") == []


def _uploading(part_dir: Path) -> bool:
    """A checkpoint tar is partly in the API's store."""
    part = part_dir / ".checkpoint.tar.part"
    return part.is_file() and part.stat().st_size > 0


def test_a_remote_worker_killed_while_sending_an_artifact_leaves_one_succeeded_job_and_one_set(
    service: Service, tiny_mixtral_dir: Path
) -> None:
    key = _service_key(service)
    service.start_api()
    store = service.tmp / "data" / "artifacts"
    with service.client(timeout=60) as client:
        remote_worker(service, "host-a", key, transfer_chunk_bytes=str(CHUNK))
        job_id = submit(client, {"kind": "local", "path": str(tiny_mixtral_dir)})
        running = wait_job(client, job_id, lambda j: j["status"] == "running", timeout=120)
        pgid = pgid_of(running["worker"])
        deadline = time.monotonic() + 180
        while not _uploading(store / job_id / "1"):
            assert time.monotonic() < deadline, service.logs()
            time.sleep(0.01)
        with frozen(pgid):
            part = store / job_id / "1" / ".checkpoint.tar.part"
            time.sleep(0.3)  # a chunk on its way lands; no other can start
            sent = part.stat().st_size
            os.killpg(pgid, signal.SIGKILL)
        remote_worker(service, "host-b", key, transfer_chunk_bytes=str(CHUNK))  # its reaper re-queues the job
        job = wait_job(client, job_id, lambda j: j["status"] in ("succeeded", "failed"), timeout=240)
        artifacts = served(client, job_id)
        events = events_of(client, job_id)
    assert 0 < sent, "the kill came before any byte of the checkpoint arrived"
    assert (job["status"], job["attempts"], job["host"]) == ("succeeded", 2, "host-b"), (job, service.logs())
    assert len(runs_started(events)) == 2
    assert sum(e["data"].get("text") == "job succeeded" for e in events) == 1  # it ended once
    assert all(recorded == got for recorded, got in artifacts.values()), artifacts
    assert "checkpoint.tar" in artifacts
    # One set: the second attempt's files, exactly the recorded ones; the first attempt's part is gone.
    assert files_under(store / job_id) == sorted(f"2/{name}" for name in artifacts)


@pytest.mark.parametrize("partial", ["resumed", "corrupt"])
def test_a_fetch_resumes_a_partial_download_and_starts_over_from_a_corrupt_one(
    service: Service, tiny_mixtral_dir: Path, tmp_path: Path, partial: str
) -> None:
    service.start_api()
    with service.client(timeout=60) as client:
        upload_id = upload(client, tiny_mixtral_dir)
    settings = Settings(data_dir=tmp_path / "host-c", api_url=service.url, worker_key=_service_key(service))
    remote = ApiClient(settings, sleep=lambda _s: None)
    try:
        url = f"/v1/worker/uploads/{upload_id}/content"
        head = remote.http.get(url, headers={"Range": "bytes=0-99999"}).content  # as a dropped fetch left it
        cache = settings.data_dir / "cache" / "uploads"
        cache.mkdir(parents=True)
        (cache / f"{upload_id}.tar.part").write_bytes(head if partial == "resumed" else b"\0" * len(head))
        folder = remote.fetch_upload(upload_id)
        assert remote.fetch_upload(upload_id) == folder  # cached: asked once per host
    finally:
        remote.close()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / name).read_bytes() == (tiny_mixtral_dir / name).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [f".{upload_id}.lock", upload_id]  # no part left
    ranges = [line for line in (service.tmp / "api.log").read_text().splitlines() if url in line and "GET" in line]
    # The partial fetch, then the rest only (206) when the part was good; the whole tar again (200) when not.
    assert ranges[1:] and ("206" in ranges[-1]) == (partial == "resumed"), ranges


@pytest.mark.parametrize("key", ["wrong", "team"])
def test_a_worker_whose_credential_the_api_refuses_stops_at_once_saying_why(service: Service, key: str) -> None:
    service.start_api()
    credential = service.key if key == "team" else "mcw_00000000_" + "A" * 43
    worker = remote_worker(service, f"host-{key}", credential)
    assert worker.wait(60) == 2  # before any job: it would fail every one it took
    said = {
        "wrong": "missing or invalid key: this route needs a worker credential",
        "team": "a team API key cannot call this route; it needs a worker credential",
    }
    assert f"refuses MOECOMP_WORKER_KEY: {said[key]}" in (service.tmp / f"host-{key}.log").read_text()
