"""Authentication: Bearer keys and the dashboard cookie; wrong, malformed and revoked keys get 401."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from moecomp.persistence.database import Database
from moecomp.persistence.keys import revoke_api_key
from moecomp.persistence.models import Job
from tests.api.helpers import count, job_body


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer mc_abcdefgh_" + "x" * 43],
)
def test_missing_or_wrong_key_is_401(client: TestClient, db: Database, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/methods"), ("GET", "/v1/jobs/x")]:
        response = client.request(method, path, headers=headers, json=job_body() if method == "POST" else None)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": "missing or invalid API key"}
    assert count(db, Job) == 0


def test_a_right_prefix_with_a_wrong_secret_is_401(client: TestClient, auth: dict[str, str]) -> None:
    key = auth["Authorization"].removeprefix("Bearer ")
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_revoked_key_is_refused_at_once(client: TestClient, auth: dict[str, str], db: Database) -> None:
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    prefix = auth["Authorization"].removeprefix("Bearer ").split("_")[1]
    with db.session() as session:
        assert revoke_api_key(session, prefix) == 1
    assert client.get("/v1/jobs", headers=auth).status_code == 401


def test_dashboard_cookie_authenticates(client: TestClient, auth: dict[str, str]) -> None:
    key = auth["Authorization"].removeprefix("Bearer ")
    client.cookies.set("moecomp_key", key)
    try:
        assert client.get("/v1/jobs").status_code == 200
        client.cookies.set("moecomp_key", key + "x")
        assert client.get("/v1/jobs").status_code == 401
    finally:
        client.cookies.clear()


def test_probes_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
