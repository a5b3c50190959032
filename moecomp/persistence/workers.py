"""Worker presence: each worker's main process renews its row every heartbeat; silent rows count as gone.

A job's own heartbeat (jobs.heartbeat) says whether that job's worker lives; this says whether any worker
lives at all, idle ones included: /readyz, /metrics and the dashboard read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from moecomp.persistence.database import changed_rows
from moecomp.persistence.models import Job, JobStatus, Worker, utcnow

FORGET_AFTER = timedelta(days=1)  # rows of workers silent this long are deleted (their names never come back)


@dataclass(frozen=True)
class Report:
    """What a worker says of itself at start and with every beat."""

    host: str | None = None
    version: str | None = None
    gpus: list[dict[str, Any]] | None = field(default=None)  # [{"name", "memory_bytes"}]; [] on a CPU host


def beat(session: Session, name: str, report: Report | None = None) -> None:
    """Say that worker ``name`` is alive now, and what it runs on (its row is created on the first beat)."""
    now = utcnow()
    said = {} if report is None else {"host": report.host, "version": report.version, "gpus": report.gpus}
    if changed_rows(session, update(Worker).where(Worker.name == name).values(beat_at=now, **said)) == 0:
        session.add(Worker(name=name, started_at=now, beat_at=now, **said))
    session.execute(delete(Worker).where(Worker.beat_at < now - FORGET_AFTER))
    try:
        session.commit()
    except IntegrityError:  # a concurrent first beat of the same name: it is there now
        session.rollback()


def forget(session: Session, name: str) -> None:
    """Worker ``name`` is gone (stopped, or its process tree died): it no longer counts as alive."""
    session.execute(delete(Worker).where(Worker.name == name))
    session.commit()


def count_alive(session: Session, within_s: float) -> int:
    """Workers that beat in the last ``within_s`` seconds."""
    cut = utcnow() - timedelta(seconds=within_s)
    return session.execute(select(func.count()).select_from(Worker).where(Worker.beat_at >= cut)).scalar_one()


def listing(session: Session, within_s: float) -> list[tuple[Worker, bool, list[tuple[str, str]]]]:
    """Every known worker, newest first: (row, alive (a beat within ``within_s``), (job id, team id) of each job
    it runs)."""
    cut = utcnow() - timedelta(seconds=within_s)
    rows = list(session.scalars(select(Worker).order_by(Worker.started_at.desc(), Worker.name)))
    running = select(Job.node, Job.id, Job.team_id).where(Job.status == JobStatus.running, Job.node.is_not(None))
    jobs: dict[str, list[tuple[str, str]]] = {}
    for node, job_id, team_id in session.execute(running):
        if node is not None:  # the query keeps only running jobs with a node
            jobs.setdefault(node, []).append((job_id, team_id))
    return [(row, row.beat_at >= cut, sorted(jobs.get(row.name, []))) for row in rows]
