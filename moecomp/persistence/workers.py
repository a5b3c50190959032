"""Worker presence: each worker's main process renews its row every heartbeat; silent rows count as gone.

A job's own heartbeat (jobs.heartbeat) says whether that job's worker lives; this says whether any worker
lives at all, idle ones included: /readyz, /metrics and the dashboard read it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from moecomp.persistence.models import Worker, utcnow

FORGET_AFTER = timedelta(days=1)  # rows of workers silent this long are deleted (their names never come back)


def beat(session: Session, name: str) -> None:
    """Say that worker ``name`` is alive now (its row is created on the first beat)."""
    now = utcnow()
    if session.execute(update(Worker).where(Worker.name == name).values(beat_at=now)).rowcount == 0:  # type: ignore[attr-defined]
        session.add(Worker(name=name, started_at=now, beat_at=now))
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
