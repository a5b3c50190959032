"""The worker registry as the API shows it (GET /v1/workers, the dashboard's workers table)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from moecomp.api.schemas import GpuPublic, WorkerPublic, WorkersPublic
from moecomp.persistence import workers
from moecomp.persistence.models import Team


def list_workers(session: Session, stale_after_s: float, team: Team | None) -> WorkersPublic:
    """Every worker; the ids of the jobs they run are those of ``team`` only (all of them for None: an admin)."""
    items = [
        WorkerPublic(
            name=row.name,
            host=row.host,
            version=row.version,
            gpus=None if row.gpus is None else [GpuPublic.model_validate(g) for g in row.gpus],
            started_at=row.started_at,
            beat_at=row.beat_at,
            alive=alive,
            running=len(jobs),
            jobs=[job_id for job_id, team_id in jobs if team is None or team_id == team.id],
        )
        for row, alive, jobs in workers.listing(session, stale_after_s)
    ]
    return WorkersPublic(items=items)
