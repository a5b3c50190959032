"""Helpers shared by the API tests: request bodies, row counts, worker-like status changes and artifacts, queue
contents."""

from __future__ import annotations

import base64
import hashlib
import json

import redis
from sqlalchemy import func, select

from moecomp.persistence.database import Database
from moecomp.persistence.models import Artifact, Job, JobStatus, utcnow
from moecomp.settings import Settings
from moecomp.worker.app import DEFAULT_QUEUE
from moecomp.worker.tar_stream import write_index


def job_body(keep: int = 6, path: str = "tiny-mixtral", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": {"kind": "local", "path": path},
        "recipe": {"stages": [{"method": "expert_drop", "keep": keep}], "calibration": {"samples": 8, "seq_len": 64}},
    }
    body.update(extra)
    return body


def count(db: Database, model: type) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def set_status(db: Database, job_id: str, status: JobStatus) -> None:
    """Move a job as a worker would (the worker's own code is tested in tests/worker/)."""
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status
        if status != JobStatus.queued:
            job.started_at = job.started_at or utcnow()
            job.attempts = max(job.attempts, 1)
        if JobStatus(status).final:
            job.finished_at = utcnow()
        session.commit()


def add_artifact(
    db: Database, settings: Settings, job_id: str, content: bytes, name: str = "tiny-mixtral-ed6.tar"
) -> dict[str, str]:
    """A checkpoint file in the job's artifacts folder, recorded as the worker records one: id, job_id, sha256."""
    relpath = f"{job_id}/checkpoint.tar"
    (settings.artifacts_dir / job_id).mkdir(parents=True)
    (settings.artifacts_dir / relpath).write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    with db.session() as session:
        row = Artifact(job_id=job_id, kind="checkpoint", name=name, relpath=relpath, bytes=len(content), sha256=sha)
        session.add(row)
        session.commit()
        return {"id": row.id, "job_id": job_id, "sha256": sha}


def add_tar_artifact(db: Database, settings: Settings, job_id: str, files: dict[str, bytes]) -> dict[str, str]:
    """A checkpoint folder of ``files`` and its tar index, recorded as the worker records them (lifecycle):
    id, job_id, sha256, and the folder's path."""
    folder = settings.artifacts_dir / job_id / "1" / "checkpoint"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    written = write_index(folder, folder.parent / "checkpoint.tar.index.json", "model")
    relpath = written.path.relative_to(settings.artifacts_dir).as_posix()
    with db.session() as session:
        row = Artifact(
            job_id=job_id,
            kind="checkpoint",
            name="checkpoint.tar",
            relpath=relpath,
            bytes=written.size,
            sha256=written.sha256,
        )
        session.add(row)
        session.commit()
        return {"id": row.id, "job_id": job_id, "sha256": written.sha256, "folder": str(folder)}


def queued_job_ids(redis_url: str, queue: str = DEFAULT_QUEUE) -> list[str]:
    """The job ids of the moecomp.run_job messages waiting in the Redis queue, oldest first (also used by
    benchmarks/api_load.py)."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    ids = []
    for message in reversed(raw):  # kombu LPUSHes: the list's tail is the oldest message
        envelope = json.loads(message)
        assert envelope["headers"]["task"] == "moecomp.run_job"
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        ids.append(args[0])
    return ids
