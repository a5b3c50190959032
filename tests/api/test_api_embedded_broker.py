"""Enqueue through the embedded broker (kombu's SQLAlchemy transport on SQLite): the message lands in its table."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from moecomp.api.app import create_app
from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key
from moecomp.persistence.migrate import upgrade
from moecomp.settings import Settings
from tests.api.helpers import job_body


def test_job_is_enqueued_on_the_embedded_sqlite_broker(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")  # embedded: SQLite database and SQLite broker
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    with db.session() as session:
        headers = {"Authorization": f"Bearer {create_api_key(session, 'embedded')}"}
    db.engine.dispose()
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert (ready["database"], ready["broker"], ready["workers"]) == (True, True, 0)
        job_id = client.post("/v1/jobs", json=job_body(), headers=headers).json()["id"]

    broker = create_engine(settings.resolved_broker_url.removeprefix("sqla+"))
    try:
        with broker.connect() as conn:
            payloads = conn.execute(text("SELECT payload FROM kombu_message")).scalars().all()
    finally:
        broker.dispose()
    [payload] = payloads
    envelope = json.loads(payload)
    assert envelope["headers"]["task"] == "moecomp.run_job"
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [job_id]
