"""Jobs as the API sees them: submit (idempotent), list (cursor pages), read, cancel.

The job is committed `queued` before it is enqueued, so a worker never receives an id it cannot read;
a failed enqueue leaves the job queued, marked for the next reaper pass to send again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from moecomp.api.errors import Conflict, Invalid, NotFound
from moecomp.api.schemas import ErrorPublic, JobCreate, JobPublic
from moecomp.api.services import limits
from moecomp.api.services.model_sources import check_recipe_fits, resolve_source
from moecomp.api.services.text_sources import check_text_sources
from moecomp.persistence.database import changed_rows
from moecomp.persistence.jobs import FINAL, append_event, mark_unsent
from moecomp.persistence.models import Artifact, Job, JobStatus, Team, utcnow
from moecomp.settings import Settings
from moecomp.worker.artifacts import remove_job_files

log = logging.getLogger(__name__)

MAX_PAGE = 200
# Ids are uuid4 hex (models.new_id); anything else cannot exist, and must not reach the database
# (PostgreSQL refuses NUL bytes in text with an error instead of finding nothing).
ID_RE = re.compile(r"[0-9a-f]{32}")  # used with fullmatch
IDEMPOTENCY_LOC = ("header", "idempotency-key")


@dataclass
class Submitted:
    job: Job
    created: bool  # False on an idempotent replay


def request_digest(payload: JobCreate) -> str:
    """sha256 of the request after defaults, so equal requests spelled differently replay alike."""
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session: Session, team: Team, key: str, digest: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.team_id == team.id, Job.idempotency_key == key))
    if job is not None and job.request_sha256 != digest:
        raise Invalid(IDEMPOTENCY_LOC, "this Idempotency-Key was already used with a different request body", key)
    return job


def _insert(
    session: Session, settings: Settings, team: Team, payload: JobCreate, key: str | None, digest: str
) -> Submitted:
    source = resolve_source(payload.model, session, settings, team)
    if source.config is not None:
        check_recipe_fits(payload.recipe, source.config)
    check_text_sources(payload, settings)
    limits.lock_team(session, team)  # until the commit below: the team's submissions go in one at a time
    if key is not None and (twin := _replay(session, team, key, digest)) is not None:
        session.rollback()  # a concurrent request with the same key got in first: answer as its replay
        return Submitted(twin, created=False)
    limits.check_active_jobs(session, settings, team)
    job = Job(
        team_id=team.id,
        status=JobStatus.queued,
        model_source=source.stored,
        model_ref=source.ref,
        recipe=payload.recipe.model_dump(mode="json"),
        evaluation=payload.evaluation.model_dump(mode="json"),
        idempotency_key=key,
        request_sha256=digest,
        created_at=utcnow(),
    )
    session.add(job)
    session.commit()
    return Submitted(job, created=True)


def submit_job(
    session: Session,
    settings: Settings,
    team: Team,
    payload: JobCreate,
    idempotency_key: str | None,
    enqueue: Callable[[str], None],
) -> Submitted:
    """Store a queued job, commit, then enqueue it; the same key and body return the first job.

    A replay is answered before the team's limit of active jobs is checked (429), so a client retrying
    a submission that went in always gets its job back.
    """
    digest = request_digest(payload)
    if idempotency_key is not None and (job := _replay(session, team, idempotency_key, digest)) is not None:
        return Submitted(job, created=False)
    submitted = _insert(session, settings, team, payload, idempotency_key, digest)
    if submitted.created:
        try:
            enqueue(submitted.job.id)
        except Exception:  # the broker is down: the job stays queued and the next reaper pass sends it again
            log.exception("could not enqueue job %s; it stays queued for the reaper", submitted.job.id)
            mark_unsent(session, submitted.job.id)
    return submitted


def get_job(session: Session, team: Team, job_id: str) -> Job:
    """The team's job, else 404 (another team's job is not found either)."""
    job = session.get(Job, job_id) if ID_RE.fullmatch(job_id) else None
    if job is None or job.team_id != team.id or job.deleted_at is not None:
        raise NotFound("job not found")
    return job


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        if not ID_RE.fullmatch(job_id):
            raise ValueError(job_id)
        return datetime.fromisoformat(created), job_id
    except (binascii.Error, ValueError, TypeError):
        raise Invalid(("query", "cursor"), "not a cursor this API returned", cursor) from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_jobs(
    session: Session, team: Team, status: JobStatus | None, model: str | None, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """A page of the team's jobs newest first, and the cursor of the next page (None at the end)."""
    query = select(Job).where(Job.team_id == team.id, Job.deleted_at.is_(None))
    if status is not None:
        query = query.where(Job.status == status)
    if model:
        query = query.where(Job.model_ref.like(f"%{_escape_like(model)}%", escape="\\"))
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    page = rows[:limit]
    return page, encode_cursor(page[-1]) if len(rows) > limit else None


def cancel_job(session: Session, team: Team, job_id: str) -> Job:
    """queued -> cancelled now; running -> cancel_requested (the worker stops between layers); final -> 409."""
    job = get_job(session, team, job_id)
    # Conditional updates: the worker may claim or finish the job between our read and our write.
    stopped = changed_rows(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(
            status=JobStatus.cancelled,
            cancel_requested=True,
            finished_at=utcnow(),
            error_code="cancelled",
            error_message="cancelled before it started",
        ),
    )
    flagged = stopped or changed_rows(
        session, update(Job).where(Job.id == job.id, Job.status == JobStatus.running).values(cancel_requested=True)
    )
    session.commit()
    if stopped:  # no worker will ever write this job's events: say what happened here
        append_event(session, job.id, "message", "cancel", {"text": "cancelled before it started"})
    session.refresh(job)
    if not flagged and JobStatus(job.status).final:
        raise Conflict(f"job is already {job.status}")
    return job


def delete_job(session: Session, settings: Settings, team: Team, job_id: str) -> None:
    """Forget an ended job and remove its files; 409 while it is queued or running (cancel it first).

    The job disappears (404 from then on, for its events and artifacts too) and frees its Idempotency-Key.
    """
    job = get_job(session, team, job_id)
    # Conditional: a worker may claim a queued job between our read and our write; a final job stays final.
    ended = changed_rows(
        session,
        update(Job)
        .where(Job.id == job.id, Job.status.in_(FINAL), Job.deleted_at.is_(None))
        .values(deleted_at=utcnow(), idempotency_key=None),
    )
    if not ended:
        session.rollback()
        session.refresh(job)
        raise Conflict(f"job is {job.status}: cancel it first (POST /v1/jobs/{job.id}/cancel), then delete it")
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    session.commit()
    # After the commit: a crash here leaves a folder that the retention sweep removes (its job is deleted).
    remove_job_files(settings.artifacts_dir, job.id)


def job_public(job: Job) -> JobPublic:
    error = ErrorPublic(code=job.error_code, message=job.error_message or "") if job.error_code else None
    return JobPublic(
        id=job.id,
        status=JobStatus(job.status),
        model=job.model_source,
        model_ref=job.model_ref,
        recipe=job.recipe,
        evaluation=job.evaluation,
        progress=job.progress,
        stage=job.stage,
        attempts=job.attempts,
        error=error,
        worker=job.worker,
        host=job.host,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        cancel_requested=job.cancel_requested,
    )
