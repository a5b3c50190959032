"""API keys: stored as a hash, looked up by their public prefix, compared in constant time; revocation
takes effect at once, for the next request of every kind and for an event stream already open.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from moecomp.api.deps import COOKIE_NAME
from moecomp.persistence.database import Database
from moecomp.persistence.keys import create_api_key, revoke_api_key, team_for_key
from moecomp.persistence.models import ApiKey, JobStatus
from moecomp.settings import Settings
from tests.api.helpers import job_body, set_status
from tests.api.test_api_events import add_events, parse_sse
from tests.live_server import live_server

UNAUTHORIZED = {"detail": "missing or invalid API key"}


def finished_job(client: TestClient, db: Database, auth: dict[str, str]) -> str:
    """A job of the key's team that ended with three events."""
    job = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    add_events(db, job, 1, 3)
    set_status(db, job, JobStatus.succeeded)
    return job


def test_keys_are_stored_hashed_looked_up_by_prefix_and_compared_in_constant_time(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with db.session() as session:
        key = create_api_key(session, "team-a")
    prefix, secret = key.split("_", 2)[1:]
    with db.session() as session:
        [row] = session.scalars(select(ApiKey)).all()
        stored = [str(getattr(row, column.key)) for column in ApiKey.__table__.columns]
    assert not [value for value in stored if secret in value]  # the secret is nowhere in the table
    assert row.prefix == prefix and row.secret_hash == hashlib.sha256(key.encode()).hexdigest()

    sent: list[Any] = []  # every parameter the lookups send to the database
    event.listen(db.engine, "before_cursor_execute", lambda *args: sent.append(args[3]))
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    with db.session() as session:
        team = team_for_key(session, key)
        assert team is not None and team.name == "team-a"
        assert team_for_key(session, forged) is None
    # The database only ever sees the public prefix; the hashes are compared in Python, in constant time.
    assert prefix in str(sent) and row.secret_hash not in str(sent) and secret not in str(sent)
    assert compared == [
        (row.secret_hash, row.secret_hash),
        (row.secret_hash, hashlib.sha256(forged.encode()).hexdigest()),
    ]


def test_revocation_takes_effect_at_once(client: TestClient, db: Database, auth: dict[str, str]) -> None:
    key, job = auth["Authorization"].removeprefix("Bearer "), finished_job(client, db, auth)
    login = client.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert login.status_code == 303 and client.cookies.get(COOKIE_NAME) == key
    assert client.get("/dashboard").status_code == 200 and client.get("/v1/jobs").status_code == 200
    bearer = {"Authorization": f"Bearer {key}"}
    stream = client.get(f"/v1/jobs/{job}/events/stream", headers=bearer)
    assert stream.status_code == 200 and [f.get("id") for f in parse_sse(stream.text)] == ["1", "2", "3", None]

    with db.session() as session:
        assert revoke_api_key(session, key.split("_")[1]) == 1
    # No cache, no grace period: the very next request of every kind is refused.
    assert client.get("/v1/jobs").status_code == 401  # the dashboard's cookie
    assert client.get("/dashboard", follow_redirects=False).headers["location"] == "/dashboard/login?next=/dashboard"
    client.cookies.clear()
    assert client.get(f"/v1/jobs/{job}", headers=bearer).status_code == 401
    reconnect = client.get(f"/v1/jobs/{job}/events/stream", headers=bearer | {"Last-Event-ID": "2"})
    assert reconnect.status_code == 401 and reconnect.json() == UNAUTHORIZED
    relogin = client.post("/dashboard/login", data={"key": key}, follow_redirects=False)
    assert relogin.status_code == 401 and COOKIE_NAME not in relogin.cookies


def test_an_open_event_stream_ends_once_its_key_is_revoked(
    client: TestClient, settings: Settings, db: Database, auth: dict[str, str]
) -> None:
    key = auth["Authorization"].removeprefix("Bearer ")
    job = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    set_status(db, job, JobStatus.running)
    add_events(db, job, 1, 1)
    with live_server(settings) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        with http.stream("GET", f"/v1/jobs/{job}/events/stream", timeout=10) as response:
            lines = response.iter_lines()
            assert next(lines) == "id: 1"
            with db.session() as session:
                revoke_api_key(session, key.split("_")[1])
            revoked = time.monotonic()
            rest = list(lines)  # the server closes the stream: no `end`, so an EventSource reconnects...
            assert time.monotonic() - revoked < 3 and not [line for line in rest if line.startswith("event: end")]
        # ... and is refused, which sends the dashboard to its sign-in page
        assert http.get(f"/v1/jobs/{job}/events/stream", headers={"Last-Event-ID": "1"}).status_code == 401
