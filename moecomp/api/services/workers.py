"""The worker registry as the API shows it (GET /v1/workers, the dashboard's workers table)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from moecomp.api.schemas import GpuPublic, WorkerPublic, WorkersPublic
from moecomp.persistence import workers


def list_workers(session: Session, stale_after_s: float) -> WorkersPublic:
    items = [
        WorkerPublic(
            name=row.name,
            host=row.host,
            version=row.version,
            gpus=None if row.gpus is None else [GpuPublic.model_validate(g) for g in row.gpus],
            started_at=row.started_at,
            beat_at=row.beat_at,
            alive=alive,
            jobs=jobs,
        )
        for row, alive, jobs in workers.listing(session, stale_after_s)
    ]
    return WorkersPublic(items=items)
