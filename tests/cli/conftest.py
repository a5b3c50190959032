"""The real API for the client tests: uvicorn in a thread on SQLite with a SQLite broker, and a key in the env."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from moecomp.api.app import create_app
from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key
from moecomp.persistence.migrate import upgrade
from moecomp.settings import Settings
from tests.worker.procs import free_port


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
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    monkeypatch.setenv("MOECOMP_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MOECOMP_KEY", key)
    yield settings
    server.should_exit = True
    thread.join(10)
