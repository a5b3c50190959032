"""The real app on a real database (SQLite and PostgreSQL) with a real Redis broker, through TestClient."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from moecomp.api.app import create_app
from moecomp.assets import MODELS
from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key
from moecomp.settings import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database, both already migrated: copies of
    databases migrated once per session (tests/conftest.py)."""
    if request.param == "sqlite":
        path = tmp_path / "moecomp.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_template"), path)
        return f"sqlite:///{path}"
    return request.getfixturevalue("migrated_postgres_url")


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    local_models = tmp_path / "models"
    local_models.mkdir()
    return Settings(
        data_dir=tmp_path / "var",
        database_url=database_url,
        broker_url=redis_url,
        allowed_model_roots=[MODELS, local_models],
        upload_limit_bytes=2 * 1024**2,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    yield database
    database.engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _headers(db: Database, team: str) -> dict[str, str]:
    with db.session() as session:
        return {"Authorization": f"Bearer {create_api_key(session, team)}"}


@pytest.fixture
def auth(db: Database) -> dict[str, str]:
    return _headers(db, "team-a")


@pytest.fixture
def other_auth(db: Database) -> dict[str, str]:
    return _headers(db, "team-b")


@pytest.fixture
def tiny_model_copy(settings: Settings) -> Path:
    """The bundled tiny model's config in a folder of the test's own allowed root (no weights needed)."""
    folder = settings.allowed_model_roots[1] / "tiny"
    folder.mkdir()
    shutil.copy(MODELS / "tiny-mixtral" / "config.json", folder / "config.json")
    return folder
