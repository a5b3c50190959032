"""Shared test fixtures: the trained tiny models, and real PostgreSQL and Redis servers.

PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) are started by .ci/run; tests
that need them get a fresh database / a fresh Redis db number and clean up after themselves.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from moecomp.assets import DEMO_MODEL, HELDOUT_TEXT, TEXTS
from moecomp.persistence.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"

PG_ADMIN_URL = os.environ.get("MOECOMP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MOECOMP_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(scope="session")
def tiny_mixtral_dir() -> Path:
    return DEMO_MODEL


@pytest.fixture(scope="session")
def tiny_qwen2_moe_dir() -> Path:
    return FIXTURE_MODELS / "tiny-qwen2-moe"


@pytest.fixture(scope="session")
def heldout_text() -> Path:
    return HELDOUT_TEXT


@pytest.fixture(scope="session")
def calibration_texts() -> list[Path]:
    return sorted(TEXTS.glob("*.txt.gz"))


@contextmanager
def new_postgres_database(template: str = "template1") -> Iterator[str]:
    """A new PostgreSQL database copied from ``template`` (by default an empty one); its URL, dropped on exit."""
    name = f"moecomp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    with new_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    """A PostgreSQL database migrated once per session, the template of ``migrated_postgres_url``: Alembic run for
    each of the hundreds of API tests was a tenth of a second each (the migrations themselves are tested in
    tests/persistence/test_migrations.py)."""
    with new_postgres_database() as url:
        upgrade(url)  # its engine holds no connection after (NullPool): a template must have none
        yield url.rsplit("/", 1)[1]


@pytest.fixture
def migrated_postgres_url(migrated_postgres_template: str) -> Iterator[str]:
    """A new PostgreSQL database at the migrations' head for one test, dropped afterwards."""
    with new_postgres_database(migrated_postgres_template) as url:
        yield url


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; a test copies it (see migrated_postgres_template)."""
    path = tmp_path_factory.mktemp("migrated") / "moecomp.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'moecomp.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after the test.

    The number is held with an exclusive file lock for the test's duration, so test runs side by side on
    one machine never flush each other's queues.
    """
    import fcntl

    import redis

    for db in range(1, 16):
        lock = open(f"/tmp/moecomp-test-redis-db-{db}.lock", "w")  # noqa: SIM115 (held until the test ends)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            lock.close()
    else:
        pytest.fail("all 15 Redis test databases are held by other test runs")
    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        lock.close()
