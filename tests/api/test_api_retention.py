"""DELETE /v1/jobs/{id} and the retention sweep, with real files, on SQLite and PostgreSQL.

Time is moved by writing finished_at / created_at in the database, as if the job had ended long ago.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from moecomp.cli.serve import _reap_on_start
from moecomp.persistence.database import Database
from moecomp.persistence.models import Artifact, Job, JobStatus, Upload, utcnow
from moecomp.settings import Settings
from moecomp.worker.retention import start_sweeper, sweep, sweep_safely
from moecomp.worker.tar_stream import INDEX_SUFFIX
from tests.api.helpers import add_artifact, job_body, set_status
from tests.api.test_api_uploads import TAR, model_tar

CONTENT = os.urandom(50_000)


def ended_job(client: TestClient, auth: dict[str, str], db: Database, settings: Settings, days_ago: float = 0) -> dict:
    """A succeeded job with a checkpoint file on disk, ended ``days_ago``; returns add_artifact's ids and its path."""
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    set_status(db, job_id, JobStatus.succeeded)
    move(db, Job, job_id, finished_at=utcnow() - timedelta(days=days_ago))
    return add_artifact(db, settings, job_id, CONTENT) | {"dir": str(settings.artifacts_dir / job_id)}


def move(db: Database, table: type[Job] | type[Upload], row_id: str, **values: object) -> None:
    with db.session() as session:
        session.execute(update(table).where(table.id == row_id).values(**values))
        session.commit()


def test_delete_removes_the_files_and_the_job_for_its_team_only(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], db: Database, settings: Settings
) -> None:
    job = ended_job(client, auth, db, settings)
    url = f"/v1/jobs/{job['job_id']}"
    assert client.delete(url, headers=other_auth).status_code == 404  # another team's job is not found
    assert Path(job["dir"]).is_dir()
    assert client.delete(url, headers=auth).status_code == 204
    assert not Path(job["dir"]).exists()
    for path in (url, f"{url}/events", f"{url}/artifacts", f"/v1/artifacts/{job['id']}/content"):
        assert client.get(path, headers=auth).status_code == 404, path
    assert client.post(f"{url}/cancel", headers=auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 404
    assert job["job_id"] not in [j["id"] for j in client.get("/v1/jobs", headers=auth).json()["items"]]
    with db.session() as session:
        assert session.query(Artifact).filter_by(job_id=job["job_id"]).count() == 0


def test_delete_frees_the_idempotency_key(client: TestClient, auth: dict[str, str], db: Database) -> None:
    key = {**auth, "Idempotency-Key": "nightly-1"}
    first = client.post("/v1/jobs", json=job_body(), headers=key).json()["id"]
    set_status(db, first, JobStatus.failed)
    assert client.delete(f"/v1/jobs/{first}", headers=auth).status_code == 204
    again = client.post("/v1/jobs", json=job_body(), headers=key)
    assert again.status_code == 201 and again.json()["id"] != first


@pytest.mark.parametrize("state", [JobStatus.queued, JobStatus.running])
def test_delete_of_a_job_not_ended_is_refused_with_409(
    state: JobStatus, client: TestClient, auth: dict[str, str], db: Database, settings: Settings
) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    set_status(db, job_id, state)
    add_artifact(db, settings, job_id, CONTENT)
    refused = client.delete(f"/v1/jobs/{job_id}", headers=auth)
    assert refused.status_code == 409 and f"cancel it first (POST /v1/jobs/{job_id}/cancel)" in refused.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == state
    assert (settings.artifacts_dir / job_id / "checkpoint.tar").is_file()


def test_sweep_expires_old_artifacts_and_keeps_the_job(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings
) -> None:
    old = ended_job(client, auth, db, settings, days_ago=settings.retention_days + 1)
    recent = ended_job(client, auth, db, settings, days_ago=settings.retention_days - 1)
    swept = sweep(settings, db)
    assert swept.expired == [old["job_id"]] and not Path(old["dir"]).exists()
    gone = client.get(f"/v1/artifacts/{old['id']}/content", headers=auth)
    assert gone.status_code == 410 and "expired on" in gone.json()["detail"] and "30 days" in gone.json()["detail"]
    assert client.get(f"/v1/jobs/{old['job_id']}", headers=auth).json()["status"] == "succeeded"
    listed = client.get(f"/v1/jobs/{old['job_id']}/artifacts", headers=auth).json()["items"]
    assert [a["expired_at"] is not None for a in listed] == [True]
    assert client.get(f"/v1/artifacts/{recent['id']}/content", headers=auth).content == CONTENT
    assert sweep(settings, db).expired == []  # marked once; a second pass finds nothing


def test_retention_zero_keeps_everything(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings
) -> None:
    old = ended_job(client, auth, db, settings, days_ago=10_000)
    settings.retention_days = 0
    assert sweep(settings, db).expired == [] and Path(old["dir"]).is_dir()


def test_sweep_removes_old_uploads_no_job_needs(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings
) -> None:
    def upload(days_ago: float) -> str:
        upload_id = client.post("/v1/models", content=model_tar(), headers={**auth, **TAR}).json()["id"]
        move(db, Upload, upload_id, created_at=utcnow() - timedelta(days=days_ago))
        return upload_id

    old_unused, old_queued, old_used_lately, recent = upload(40), upload(40), upload(40), upload(1)
    for upload_id in (old_queued, old_used_lately):
        body = job_body() | {"model": {"kind": "upload", "upload_id": upload_id}}
        job_id = client.post("/v1/jobs", json=body, headers=auth).json()["id"]
        if upload_id == old_used_lately:  # a job that ended yesterday still counts as a use
            set_status(db, job_id, JobStatus.succeeded)
    swept = sweep(settings, db)
    assert swept.uploads == [old_unused]
    kept = [old_queued, old_used_lately, recent]
    # Each upload with the index of its tar (served to workers on other hosts): the removed one's goes with it.
    expected = kept + [f"{upload_id}.tar{INDEX_SUFFIX}" for upload_id in kept]
    assert sorted(p.name for p in settings.uploads_dir.iterdir()) == sorted(expected)
    with db.session() as session:
        assert session.get(Upload, old_unused) is None


def test_sweep_at_serve_start_removes_what_an_interrupted_delete_left(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings
) -> None:
    deleted = ended_job(client, auth, db, settings)
    move(db, Job, deleted["job_id"], deleted_at=utcnow())  # marked deleted, but the process died before rmtree
    stranger = settings.artifacts_dir / "not-a-job-of-this-database"
    stranger.mkdir()
    _reap_on_start(settings)  # what `moecomp serve` runs before it answers requests
    assert not Path(deleted["dir"]).exists() and stranger.is_dir()


def test_the_apis_sweeper_expires_artifacts_on_its_own_host_and_a_remote_workers_sweep_does_nothing(
    client: TestClient, auth: dict[str, str], db: Database, settings: Settings
) -> None:
    old = ended_job(client, auth, db, settings, days_ago=40)
    remote = settings.model_copy(update={"api_url": "http://api.internal:8000", "data_dir": settings.data_dir / "w"})
    sweep_safely(remote, db)  # a worker on another host: the files are not its own, nor are the rows to mark
    with db.session() as session:
        assert session.get(Artifact, old["id"]).expired_at is None and Path(old["dir"]).is_dir()
    stop = start_sweeper(settings, every_s=0.1)  # what `moecomp serve` starts (hourly)
    try:
        deadline = time.monotonic() + 20
        while not _expired(db, old["id"]):  # the files go first, then the row is marked
            assert time.monotonic() < deadline, "the sweeper never expired the old artifacts"
            time.sleep(0.1)
    finally:
        stop.set()
    assert not Path(old["dir"]).exists()


def _expired(db: Database, artifact_id: str) -> bool:
    with db.session() as session:
        return session.get(Artifact, artifact_id).expired_at is not None
