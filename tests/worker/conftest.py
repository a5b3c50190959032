"""Worker fixtures: a settings object on a fresh SQLite or PostgreSQL database, and job factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moecomp.persistence.database import Database
from moecomp.persistence.models import Base, Job, Team
from moecomp.settings import Settings
from tests.worker.helpers import EVAL_SMALL


@pytest.fixture
def settings(database_url: str, tmp_path: Path, tiny_mixtral_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        heartbeat_s=0.2,
        stale_after_s=2.0,
        max_attempts=2,
        device="cpu",
        allowed_model_roots=[tiny_mixtral_dir.parent],
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    Base.metadata.create_all(database.engine)
    yield database
    database.engine.dispose()


@pytest.fixture
def make_job(db: Database, tiny_mixtral_dir: Path) -> Callable[..., str]:
    def make(recipe: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None, **fields: Any) -> str:
        with db.session() as s:
            team = s.query(Team).filter_by(name="t").one_or_none() or Team(name="t")
            s.add(team)
            s.flush()
            job = Job(
                team_id=team.id,
                model_source=fields.pop("model_source", {"kind": "local", "path": str(tiny_mixtral_dir)}),
                recipe=recipe or {},
                evaluation=EVAL_SMALL if evaluation is None else evaluation,
                **fields,
            )
            s.add(job)
            s.commit()
            return job.id

    return make
