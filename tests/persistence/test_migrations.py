"""The migrated schema equals the models (no autogenerate diff), on SQLite and PostgreSQL; downgrade works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from moecomp.persistence.migrate import alembic_config, upgrade
from moecomp.persistence.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'm.db'}"  # the folder does not exist yet
    return request.getfixturevalue("postgres_url")


def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    upgrade(database_url)
    assert _diff(database_url) == []


def test_downgrade_to_base_and_back(database_url: str) -> None:
    upgrade(database_url)
    command.downgrade(alembic_config(database_url), "base")
    engine = create_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(database_url)
    assert _diff(database_url) == []


def test_upgrade_is_idempotent(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)
    assert _diff(database_url) == []


def test_alembic_command_line_uses_the_settings(tmp_path: Path) -> None:
    """Production runs `alembic upgrade head` with MOECOMP_* in the environment; the data dir may not exist yet."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "MOECOMP_DATA_DIR": str(tmp_path / "data"), "MOECOMP_DATABASE_URL": ""}
    alembic = [sys.executable, "-m", "alembic", "-c", str(root / "alembic.ini")]
    for args in (["upgrade", "head"], ["check"]):
        done = subprocess.run([*alembic, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert _diff(f"sqlite:///{tmp_path / 'data' / 'moecomp.db'}") == []
