"""The worker routes' data path on the real app (SQLite and PostgreSQL): an upload's tar out, artifacts in.

The protocol itself (api/services/worker_data.py): chunks that resume, retries that change nothing, a sha256
checked before anything is recorded, the job's lease fencing every write, and a clear 4xx for each bad input.
The whole path with real workers on hosts of their own is tests/faults/test_remote_workers.py.
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from moecomp.persistence import jobs, workers
from moecomp.persistence.database import Database
from moecomp.persistence.jobs import Lease
from moecomp.persistence.models import Artifact, Job, JobStatus
from moecomp.persistence.service_keys import Role, create_service_key
from moecomp.settings import Settings
from tests.api.helpers import job_body
from tests.api.test_api_uploads import CONFIG, TAR, model_tar

WORKER = "gpu-host-2:311"
DATA = bytes(range(256)) * 41  # 10496 bytes: several chunks of 4 KiB and a short last one


@pytest.fixture
def worker_auth(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {"Authorization": f"Bearer {create_service_key(session, Role.worker, 'gpu-host-2')}"}


@pytest.fixture
def lease(client: TestClient, db: Database, auth: dict[str, str]) -> Lease:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    with db.session() as session:
        claimed = jobs.claim(session, job_id, WORKER, 30.0, 3, host="gpu-host-2", node="gpu-host-2:300")
    assert claimed is not None
    return claimed


def url(lease: Lease, name: str = "report.json") -> str:
    return f"/v1/worker/jobs/{lease.job_id}/attempts/{lease.attempt}/artifacts/{name}"


def put(client: TestClient, auth: dict[str, str], lease: Lease, start: int, end: int, **override: str):
    headers = auth | {
        "X-Moecomp-Worker": lease.worker,
        "X-Artifact-Kind": "report",
        "X-Checksum-Sha256": hashlib.sha256(DATA).hexdigest(),
        "Content-Range": f"bytes {start}-{end}/{len(DATA)}",
    }
    return client.put(
        url(lease, override.pop("name", "report.json")), content=DATA[start : end + 1], headers=headers | override
    )


def offset(client: TestClient, auth: dict[str, str], lease: Lease) -> dict:
    response = client.get(url(lease), headers=auth | {"X-Moecomp-Worker": lease.worker})
    assert response.status_code == 200, response.text
    return response.json()


def artifacts_of(db: Database, job_id: str) -> list[Artifact]:
    with db.session() as session:
        return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id)))


def test_an_upload_is_served_to_workers_as_a_tar_with_its_sha256_and_ranges(
    client: TestClient, auth: dict[str, str], worker_auth: dict[str, str]
) -> None:
    upload = client.post("/v1/models", content=model_tar(), headers=auth | TAR).json()["id"]
    whole = client.get(f"/v1/worker/uploads/{upload}/content", headers=worker_auth)
    assert whole.status_code == 200, whole.text
    assert hashlib.sha256(whole.content).hexdigest() == whole.headers["x-checksum-sha256"]
    with tarfile.open(fileobj=io.BytesIO(whole.content)) as archive:
        assert archive.extractfile("model/config.json").read() == CONFIG  # type: ignore[union-attr]
        assert archive.getmember("model/model.safetensors").size == 1000
    rest = client.get(f"/v1/worker/uploads/{upload}/content", headers=worker_auth | {"Range": "bytes=700-"})
    assert rest.status_code == 206 and whole.content[:700] + rest.content == whole.content  # a resumed fetch
    head = client.head(f"/v1/worker/uploads/{upload}/content", headers=worker_auth)
    assert head.headers["x-checksum-sha256"] == whole.headers["x-checksum-sha256"]  # the index is reused
    missing = client.get(f"/v1/worker/uploads/{'0' * 32}/content", headers=worker_auth)
    assert missing.status_code == 404 and missing.json() == {"detail": "upload not found"}


def test_an_artifact_arrives_in_chunks_resumes_and_is_recorded_once(
    client: TestClient,
    db: Database,
    settings: Settings,
    auth: dict[str, str],
    worker_auth: dict[str, str],
    lease: Lease,
) -> None:
    assert offset(client, worker_auth, lease) == {"offset": 0, "complete": False, "artifact_id": None, "sha256": None}
    assert put(client, worker_auth, lease, 0, 4095).json()["offset"] == 4096
    assert put(client, worker_auth, lease, 4096, 8191).json()["offset"] == 8192
    retried = put(client, worker_auth, lease, 4096, 8191)  # its answer was lost: sent again, same result
    assert retried.status_code == 200 and retried.json()["offset"] == 8192
    ahead = put(client, worker_auth, lease, 9000, len(DATA) - 1)  # a gap: refused, with where to resume
    assert ahead.status_code == 409 and ahead.headers["upload-offset"] == "8192"
    assert offset(client, worker_auth, lease)["offset"] == 8192
    last = put(client, worker_auth, lease, 8192, len(DATA) - 1)
    assert last.status_code == 200 and last.json()["complete"], last.text
    again = put(client, worker_auth, lease, 0, len(DATA) - 1)  # the whole file once more: its record, unchanged
    assert again.json() == last.json() == offset(client, worker_auth, lease)
    [row] = artifacts_of(db, lease.job_id)
    assert (row.id, row.bytes, row.sha256) == (last.json()["artifact_id"], len(DATA), hashlib.sha256(DATA).hexdigest())
    folder = settings.artifacts_dir / lease.job_id / str(lease.attempt)
    assert sorted(p.name for p in folder.iterdir()) == ["report.json"]  # no part left
    with db.session() as session:
        job = session.get(Job, lease.job_id)
        job.status = JobStatus.succeeded
        session.commit()
    download = client.get(f"/v1/artifacts/{row.id}/content", headers=auth)
    assert download.content == DATA and download.headers["x-checksum-sha256"] == row.sha256


def test_bytes_that_do_not_match_the_sha256_are_dropped_not_recorded(
    client: TestClient, db: Database, settings: Settings, worker_auth: dict[str, str], lease: Lease
) -> None:
    wrong = put(client, worker_auth, lease, 0, len(DATA) - 1, **{"X-Checksum-Sha256": "0" * 64})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["header", "x-checksum-sha256"]
    assert "send the file again from offset 0" in wrong.json()["detail"][0]["msg"]
    assert artifacts_of(db, lease.job_id) == [] and offset(client, worker_auth, lease)["offset"] == 0


def test_a_worker_whose_lease_is_gone_writes_nothing(
    client: TestClient, db: Database, settings: Settings, worker_auth: dict[str, str], lease: Lease
) -> None:
    assert put(client, worker_auth, lease, 0, 4095).status_code == 200
    with db.session() as session:  # the reaper re-queued the job and another worker claimed it
        job = session.get(Job, lease.job_id)
        job.status = JobStatus.queued
        session.commit()
        newer = jobs.claim(session, lease.job_id, "gpu-host-3:7", 30.0, 3)
    assert newer is not None and newer.attempt == 2
    late = put(client, worker_auth, lease, 4096, len(DATA) - 1)
    assert late.status_code == 409 and late.headers["x-moecomp-lease"] == "lost", late.text
    assert "another attempt decides" in late.json()["detail"]
    assert artifacts_of(db, lease.job_id) == []
    # The newer attempt clears the older one's files.
    prune = client.post(
        url(newer).rsplit("/artifacts", 1)[0] + "/prune", headers=worker_auth | {"X-Moecomp-Worker": newer.worker}
    )
    assert prune.status_code == 204
    assert [p.name for p in (settings.artifacts_dir / lease.job_id).iterdir()] == []


@pytest.mark.parametrize(
    ("override", "loc"),
    [
        ({"Content-Range": "bytes 0-99"}, ["header", "content-range"]),
        ({"Content-Range": f"bytes 5-4/{len(DATA)}"}, ["header", "content-range"]),
        ({"Content-Range": "bytes 0-20000/10496"}, ["header", "content-range"]),
        ({"X-Artifact-Kind": "weights"}, ["header", "x-artifact-kind"]),
        ({"X-Checksum-Sha256": "abc"}, ["header", "x-checksum-sha256"]),
        ({"name": ".hidden"}, ["path", "name"]),
        ({"name": "a.part"}, ["path", "name"]),
        ({"Content-Range": "bytes 0-99/10496"}, ["body"]),  # the body is not 100 bytes long
    ],
)
def test_bad_chunk_requests_get_a_422_naming_what_is_wrong(
    client: TestClient, db: Database, worker_auth: dict[str, str], lease: Lease, override: dict[str, str], loc: list
) -> None:
    response = put(client, worker_auth, lease, 0, 4095, **override)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert artifacts_of(db, lease.job_id) == []


def test_the_registry_lists_each_workers_host_gpus_version_and_current_job(
    client: TestClient, db: Database, auth: dict[str, str], other_auth: dict[str, str], lease: Lease
) -> None:
    with db.session() as session:
        admin = create_service_key(session, Role.admin, "ops")
        gpus = [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984}]
        workers.beat(session, "gpu-host-2:300", workers.Report(host="gpu-host-2", version="1.2.3", gpus=gpus))
        workers.beat(session, "cpu-host:9", workers.Report(host="cpu-host", version="1.2.3", gpus=[]))
    response = client.get("/v1/workers", headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 200, response.text
    listed = {w["name"]: w for w in response.json()["items"]}
    assert listed["gpu-host-2:300"]["gpus"] == gpus and listed["gpu-host-2:300"]["jobs"] == [lease.job_id]
    assert listed["cpu-host:9"]["gpus"] == [] and listed["cpu-host:9"]["jobs"] == []
    assert all(w["alive"] and w["version"] == "1.2.3" for w in listed.values())
    assert listed["gpu-host-2:300"]["running"] == 1 and listed["cpu-host:9"]["running"] == 0
    # A team sees its own job on the worker; another team sees that the worker is busy, not with what.
    mine = {w["name"]: w for w in client.get("/v1/workers", headers=auth).json()["items"]}
    theirs = {w["name"]: w for w in client.get("/v1/workers", headers=other_auth).json()["items"]}
    assert mine["gpu-host-2:300"]["jobs"] == [lease.job_id]
    assert (theirs["gpu-host-2:300"]["jobs"], theirs["gpu-host-2:300"]["running"]) == ([], 1)
    assert client.get(f"/v1/jobs/{lease.job_id}", headers=auth).json()["host"] == "gpu-host-2"  # which host runs it


def test_a_prune_without_keep_own_drops_the_attempts_own_files(
    client: TestClient, settings: Settings, worker_auth: dict[str, str], lease: Lease
) -> None:
    """What a worker on another host does when its job fails with disk_full: the incomplete set goes."""
    assert put(client, worker_auth, lease, 0, 4095).status_code == 200
    folder = settings.artifacts_dir / lease.job_id / str(lease.attempt)
    assert [p.name for p in folder.iterdir()] == [".report.json.part"]
    prune_url = f"/v1/worker/jobs/{lease.job_id}/attempts/{lease.attempt}/prune"
    headers = worker_auth | {"X-Moecomp-Worker": lease.worker}
    assert client.post(prune_url, headers=headers).status_code == 204 and folder.is_dir()  # keep_own by default
    assert client.post(prune_url, params={"keep_own": "false"}, headers=headers).status_code == 204
    assert not folder.exists()
