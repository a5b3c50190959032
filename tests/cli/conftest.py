"""The real API for the client tests: uvicorn in a thread on SQLite with a SQLite broker, and a key in the env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key
from moecomp.persistence.migrate import upgrade
from moecomp.settings import Settings
from tests.live_server import live_server


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_mixtral_dir: Path) -> Iterator[Settings]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        allowed_model_roots=[tiny_mixtral_dir.parent],
    )
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    with db.session() as s:
        key = create_api_key(s, "cli")
    db.engine.dispose()
    with live_server(settings) as url:
        monkeypatch.setenv("MOECOMP_URL", url)
        monkeypatch.setenv("MOECOMP_KEY", key)
        yield settings
