"""Retention: files nobody may download any more are removed from disk.

- artifacts of jobs that ended more than ``settings.retention_days`` ago (the rows stay, marked expired, so
  the job keeps its history and a download answers 410 Gone); ``retention_days = 0`` keeps them forever;
- the folders of deleted jobs (DELETE /v1/jobs/{id} removes them at once; this catches an interrupted one);
- uploads older than the retention that no queued or running job reads and no kept job used since.

It runs where the reaper runs: at worker start, every ``SWEEP_EVERY_S`` in each worker, and at API start; and
every ``SWEEP_EVERY_S`` in the API (``serve``), whose host alone holds the files once workers run on other hosts.
Several sweeps at once are harmless: removing a removed folder does nothing, and rows are marked once.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from moecomp.persistence import retention
from moecomp.persistence.database import Database
from moecomp.persistence.models import utcnow
from moecomp.settings import Settings
from moecomp.worker.artifacts import remove_job_files
from moecomp.worker.tar_stream import INDEX_SUFFIX

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 3600.0
BATCH = 500


@dataclass(frozen=True)
class Swept:
    expired: list[str]  # jobs whose artifacts expired in this pass
    deleted: list[str]  # deleted jobs whose leftover folder was removed
    uploads: list[str]  # uploads removed


def sweep(settings: Settings, db: Database, now: datetime | None = None) -> Swept:
    """One retention pass (see the module docstring)."""
    now = now or utcnow()
    deleted = _remove_deleted_folders(settings, db)
    if settings.retention_days <= 0:
        return Swept([], deleted, [])
    cutoff = now - timedelta(days=settings.retention_days)
    swept = Swept(_expire_artifacts(settings, db, cutoff, now), deleted, _remove_uploads(settings, db, cutoff))
    if swept.expired or swept.uploads:
        log.info("retention: artifacts of %d jobs expired, %d uploads removed", len(swept.expired), len(swept.uploads))
    return swept


def sweep_safely(settings: Settings, db: Database) -> None:
    """A sweep that only logs a failure: a database outage must not stop the reaper or the API start.

    A worker on another host (settings.api_url) does not sweep: the files are the API host's, and marking rows
    expired while the files stay would only break downloads. The API host sweeps its own store.
    """
    if settings.api_url:
        return
    try:
        sweep(settings, db)
    except Exception:
        log.exception("retention sweep failed; the next one retries")


def _expire_artifacts(settings: Settings, db: Database, cutoff: datetime, now: datetime) -> list[str]:
    with db.session() as s:
        job_ids = retention.expiring_jobs(s, cutoff)
    for job_id in job_ids:
        # Files first: a crash in between leaves rows to mark on the next pass, never files nobody tracks.
        remove_job_files(settings.artifacts_dir, job_id)
        with db.session() as s:
            retention.mark_expired(s, job_id, now)
    return job_ids


def _remove_deleted_folders(settings: Settings, db: Database) -> list[str]:
    root = settings.artifacts_dir
    names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    deleted: list[str] = []
    for start in range(0, len(names), BATCH):  # bounded IN lists (SQLite caps bound parameters)
        with db.session() as s:
            deleted += retention.deleted_among(s, names[start : start + BATCH])
    return [job_id for job_id in deleted if remove_job_files(root, job_id)]


def _remove_uploads(settings: Settings, db: Database, cutoff: datetime) -> list[str]:
    with db.session() as s:
        upload_ids = [u.id for u in retention.unused_uploads(s, cutoff)]
    for upload_id in upload_ids:
        # The row first: a job submitted from now on is refused (unknown upload) instead of finding no files.
        with db.session() as s:
            retention.forget_upload(s, upload_id)
        shutil.rmtree(settings.uploads_dir / upload_id, ignore_errors=True)
        (settings.uploads_dir / f"{upload_id}.tar{INDEX_SUFFIX}").unlink(missing_ok=True)  # served to remote workers
    return upload_ids


def start_sweeper(settings: Settings, every_s: float = SWEEP_EVERY_S) -> threading.Event:
    """Sweep every ``every_s`` in a daemon thread (the API's process); set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        db = Database(settings.resolved_database_url)
        try:
            while not stop.wait(every_s):
                sweep_safely(settings, db)
        finally:
            db.engine.dispose()

    threading.Thread(target=loop, name="moecomp-retention", daemon=True).start()
    return stop
