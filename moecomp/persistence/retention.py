"""The rows behind retention and deletion: jobs whose artifacts expire, deleted jobs, uploads no job needs.

The files are removed by the caller (moecomp/worker/retention.py); these functions only choose and mark.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from moecomp.persistence.database import changed_rows
from moecomp.persistence.jobs import FINAL
from moecomp.persistence.models import Artifact, Job, JobStatus, Upload

ACTIVE = (JobStatus.queued, JobStatus.running)


def expiring_jobs(session: Session, cutoff: datetime) -> list[str]:
    """Ids of jobs that ended before ``cutoff`` and still have artifacts on disk."""
    query = (
        select(Artifact.job_id)
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.status.in_(FINAL), Job.finished_at < cutoff, Artifact.expired_at.is_(None))
        .distinct()
    )
    return list(session.scalars(query))


def mark_expired(session: Session, job_id: str, now: datetime) -> int:
    """Record that the job's artifact files are gone (the rows stay: a download answers 410)."""
    stmt = update(Artifact).where(Artifact.job_id == job_id, Artifact.expired_at.is_(None)).values(expired_at=now)
    count = changed_rows(session, stmt)
    session.commit()
    return count


def deleted_among(session: Session, job_ids: list[str]) -> list[str]:
    """Those of ``job_ids`` whose job was deleted (unknown ids are left alone: maybe another database's)."""
    if not job_ids:
        return []
    return list(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.deleted_at.is_not(None))))


def unused_uploads(session: Session, cutoff: datetime) -> list[Upload]:
    """Uploads made before ``cutoff`` that no queued or running job reads and no kept job used since then."""
    uses = Job.model_ref == "upload:" + Upload.id  # the ref the API stores for upload sources
    needed = or_(Job.status.in_(ACTIVE), and_(Job.created_at >= cutoff, Job.deleted_at.is_(None)))
    return list(session.scalars(select(Upload).where(Upload.created_at < cutoff, ~exists().where(uses, needed))))


def forget_upload(session: Session, upload_id: str) -> None:
    session.execute(delete(Upload).where(Upload.id == upload_id))
    session.commit()
