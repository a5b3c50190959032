"""The worker's side of a job's row: claim, heartbeat, events, artifacts, finish, and the reaper.

The database is the source of truth, not the broker. Every write a worker makes while running a job
is fenced by ``Lease(worker, attempt)``: once the reaper has re-queued a job (or a second worker has
claimed it), a late write from the old worker matches no row and is dropped, so a job that ran twice
still ends with one status and one set of artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from moecomp.persistence.database import changed_rows
from moecomp.persistence.models import Artifact, Job, JobEvent, JobStatus, utcnow

FINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
# heartbeat_at of a queued job whose send to the broker failed: older than any cut, so the next reaper pass sends it.
NEVER_SENT = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Lease:
    """Who runs a job, and which attempt: the fencing token of every write while running."""

    job_id: str
    worker: str
    attempt: int


@dataclass(frozen=True)
class Reaped:
    """What one reaper pass did: jobs put back on the queue, and jobs failed for good."""

    requeue: list[str]
    failed: list[str]


def _owned(lease: Lease) -> ColumnElement[bool]:
    return and_(
        Job.id == lease.job_id,
        Job.status == JobStatus.running,
        Job.worker == lease.worker,
        Job.attempts == lease.attempt,
    )


def claim(
    session: Session,
    job_id: str,
    worker: str,
    stale_after_s: float,
    max_attempts: int,
    host: str | None = None,
    node: str | None = None,
) -> Lease | None:
    """Atomically take a queued job (or a running one whose heartbeat went stale); None if not ours.

    One UPDATE ... WHERE decides, so two deliveries of the same message cannot both win. ``host`` and ``node``
    (the worker main process's registry name) say where it runs.
    """
    now = utcnow()
    stale = and_(Job.status == JobStatus.running, Job.heartbeat_at < now - timedelta(seconds=stale_after_s))
    claimable = and_(Job.id == job_id, or_(Job.status == JobStatus.queued, stale), Job.attempts < max_attempts)
    stmt = (
        update(Job)
        .where(claimable)
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            worker=worker,
            host=host,
            node=node,
            heartbeat_at=now,
            started_at=func.coalesce(Job.started_at, now),
            progress=0.0,
            error_code=None,
            error_message=None,
        )
        .returning(Job.attempts)
    )
    attempt = session.execute(stmt).scalar_one_or_none()
    session.commit()
    return None if attempt is None else Lease(job_id, worker, attempt)


def heartbeat(session: Session, lease: Lease) -> bool:
    """Prove the lease holder is alive; False means the job is no longer ours (re-queued or final)."""
    changed = changed_rows(session, update(Job).where(_owned(lease)).values(heartbeat_at=utcnow()))
    session.commit()
    return changed == 1


def cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one_or_none())


def set_progress(session: Session, lease: Lease, progress: float, stage: str | None) -> bool:
    values: dict[str, Any] = {"progress": max(0.0, min(1.0, progress)), "heartbeat_at": utcnow()}
    if stage is not None:
        values["stage"] = stage
    changed = changed_rows(session, update(Job).where(_owned(lease)).values(**values))
    session.commit()
    return changed == 1


def append_event(
    session: Session,
    job_id: str,
    kind: str,
    stage: str | None,
    data: dict[str, Any],
    level: str = "info",
    dedup_key: str | None = None,
) -> int:
    """Append an event with the next ``seq`` of the job (1, 2, ...); returns that seq.

    Normally one writer per job; the unique (job_id, seq) turns a rare race into a retry. An event already
    written under ``dedup_key`` is not written again (its seq is returned).
    """
    for _ in range(5):
        if dedup_key is not None:
            written = select(JobEvent.seq).where(JobEvent.job_id == job_id, JobEvent.dedup_key == dedup_key)
            if (seq := session.execute(written).scalar()) is not None:
                return seq
        seq = (session.execute(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)).scalar() or 0) + 1
        event = JobEvent(job_id=job_id, seq=seq, kind=kind, stage=stage, data=data, level=level, dedup_key=dedup_key)
        session.add(event)
        try:
            session.commit()
            return seq
        except IntegrityError:
            session.rollback()
    raise RuntimeError(f"could not append an event to job {job_id}")


def clear_artifacts(session: Session, lease: Lease) -> list[str]:
    """Forget the artifact rows of earlier attempts (the caller deletes the files); returns their relpaths."""
    relpaths = list(session.execute(select(Artifact.relpath).where(Artifact.job_id == lease.job_id)).scalars())
    session.execute(delete(Artifact).where(Artifact.job_id == lease.job_id))
    session.commit()
    return relpaths


def record_artifact(
    session: Session, lease: Lease, *, kind: str, name: str, relpath: str, size: int, sha256: str
) -> Artifact | None:
    """Record a written artifact, only while the lease still holds (None: a newer attempt owns the job).

    Recording the same file again (a retry whose first try committed) returns the existing row.
    """
    if session.execute(select(Job.id).where(_owned(lease)).with_for_update()).scalar_one_or_none() is None:
        session.rollback()
        return None
    recorded = select(Artifact).where(Artifact.job_id == lease.job_id, Artifact.relpath == relpath)
    if (existing := session.execute(recorded).scalar_one_or_none()) is not None:
        session.commit()  # ends the transaction that holds the job row's lock
        return existing
    artifact = Artifact(job_id=lease.job_id, kind=kind, name=name, relpath=relpath, bytes=size, sha256=sha256)
    session.add(artifact)
    session.commit()
    return artifact


def finish(
    session: Session,
    lease: Lease,
    status: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """End the job; False if the lease was lost meanwhile (then another attempt decides the end)."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error_code": error_code}
    values["error_message"] = error_message
    if status == JobStatus.succeeded:
        values["progress"] = 1.0
    changed = changed_rows(session, update(Job).where(_owned(lease)).values(**values))
    session.commit()
    return changed == 1


def mark_unsent(session: Session, job_id: str) -> None:
    """The job's message never reached the broker: the next reaper pass sends it (see reap_stale), without
    waiting ``undelivered_after_s`` as for a message that may still sit in the broker."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued).values(heartbeat_at=NEVER_SENT))
    session.commit()


def fail_unclaimed(session: Session, job_id: str, from_status: JobStatus, code: str, message: str) -> bool:
    """End a job no worker holds (queued, or running with a dead worker), e.g. cancelled while queued."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == from_status)
        .values(
            status=JobStatus.cancelled if code == "cancelled" else JobStatus.failed,
            error_code=None if code == "cancelled" else code,
            error_message=message,
            finished_at=utcnow(),
        )
    )
    changed = changed_rows(session, stmt)
    session.commit()
    return changed == 1


def reap_stale(
    session: Session,
    *,
    stale_after_s: float,
    max_attempts: int,
    time_limit_s: float,
    undelivered_after_s: float,
    now: datetime | None = None,
) -> Reaped:
    """One reaper pass; the caller enqueues ``requeue`` (duplicates are harmless: the claim is atomic).

    - running with a heartbeat older than ``stale_after_s``: back to queued, or failed ``worker_lost``
      once ``max_attempts`` deliveries were spent, or ``timeout`` past the job's time limit;
    - queued and not (re)sent for ``undelivered_after_s`` (a message lost before or inside the broker):
      sent again. For a queued job ``heartbeat_at`` records when it was last put on the queue.
    """
    now = now or utcnow()
    revived: list[str] = []
    failed: list[str] = []
    stale_cut = now - timedelta(seconds=stale_after_s)
    for job in session.execute(
        select(Job).where(Job.status == JobStatus.running, Job.heartbeat_at < stale_cut).with_for_update()
    ).scalars():
        verdict = _stale_verdict(job, now, max_attempts, time_limit_s)
        _apply_verdict(session, job, verdict, now)
        (revived if verdict is None else failed).append(job.id)
    lost_cut = now - timedelta(seconds=undelivered_after_s)
    waiting = select(Job).where(
        Job.status == JobStatus.queued, func.coalesce(Job.heartbeat_at, Job.created_at) < lost_cut
    )
    resent = list(session.execute(waiting.with_for_update()).scalars())
    for job in resent:
        job.heartbeat_at = now
    session.commit()
    _log_reaped(session, revived, failed)
    return Reaped(revived + [job.id for job in resent], failed)


def _stale_verdict(job: Job, now: datetime, max_attempts: int, time_limit_s: float) -> tuple[str, str] | None:
    """None to re-queue a stale running job, else the (code, message) it ends with."""
    if job.cancel_requested:  # nobody is left to stop it between layers: it stops here
        return "cancelled", "cancelled on request (its worker had stopped)"
    if job.started_at is not None and (now - job.started_at).total_seconds() > time_limit_s:
        return "timeout", f"the job ran longer than its limit of {time_limit_s:.0f} s"
    if job.attempts >= max_attempts:
        return "worker_lost", f"the worker running the job stopped answering {job.attempts} times; giving up"
    return None


def _apply_verdict(session: Session, job: Job, verdict: tuple[str, str] | None, now: datetime) -> None:
    if verdict is None:
        job.status, job.worker, job.heartbeat_at = JobStatus.queued, None, now
        return
    code, message = verdict
    job.status = JobStatus.cancelled if code == "cancelled" else JobStatus.failed
    job.error_code = None if code == "cancelled" else code
    job.error_message, job.finished_at = message, now


def _log_reaped(session: Session, revived: list[str], failed: list[str]) -> None:
    for job_id in failed:
        message = session.execute(select(Job.error_message).where(Job.id == job_id)).scalar_one()
        append_event(session, job_id, "message", "worker", {"text": message}, level="error")
    for job_id in revived:
        attempt = session.execute(select(Job.attempts).where(Job.id == job_id)).scalar_one()
        text = f"the worker was lost during attempt {attempt}; the job is queued again"
        append_event(session, job_id, "message", "worker", {"text": text}, level="warning")


def holds(session: Session, lease: Lease) -> bool:
    """Whether ``lease`` still owns its running job."""
    return session.execute(select(Job.id).where(_owned(lease))).scalar_one_or_none() is not None


def ended_by(session: Session, lease: Lease) -> bool:
    """Whether the job ended under ``lease`` (its worker and attempt are the last to have held it)."""
    ended = and_(Job.id == lease.job_id, Job.status.in_(FINAL), Job.worker == lease.worker)
    return session.execute(select(Job.id).where(ended, Job.attempts == lease.attempt)).scalar_one_or_none() is not None
