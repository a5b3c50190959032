"""Per-team admission of jobs: at most ``max_active_jobs_per_team`` queued or running at once.

The count and the insert that follows it run under a lock on the team's row, so concurrent submissions
of one team are admitted one at a time and never more than the limit get in.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from moecomp.api.errors import TooManyRequests
from moecomp.persistence.models import Job, JobStatus, Team
from moecomp.settings import Settings

RETRY_AFTER_S = 30  # jobs take minutes; polling sooner would only be refused again


def lock_team(session: Session, team: Team) -> None:
    """Hold the team's row until this transaction ends; a concurrent submitter of the team waits here.

    One statement for both databases: a no-op UPDATE of the row. PostgreSQL row-locks it (NO KEY UPDATE
    strength, so other tables' foreign-key checks on the team are not blocked); SQLite takes its single
    write lock now, before the count is read. (pysqlite opens a transaction only at the first write, so
    a SELECT ... FOR UPDATE would neither lock on SQLite nor put the count inside the transaction.)
    """
    session.execute(update(Team).where(Team.id == team.id).values(created_at=Team.created_at))


def active_jobs(session: Session, team: Team) -> int:
    active = (JobStatus.queued, JobStatus.running)
    query = select(func.count()).select_from(Job).where(Job.team_id == team.id, Job.status.in_(active))
    return session.scalar(query) or 0


def check_active_jobs(session: Session, settings: Settings, team: Team) -> None:
    """429 (and the lock released, nothing written) when the team already has its limit of active jobs."""
    limit = settings.max_active_jobs_per_team
    active = active_jobs(session, team)
    if active >= limit:
        session.rollback()
        raise TooManyRequests(
            f"your team has {active} jobs queued or running and may have at most {limit} at once; "
            f"wait for one to end (or cancel one), then submit again",
            RETRY_AFTER_S,
        )
