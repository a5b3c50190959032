"""The per-team limit on jobs queued or running: 429 with Retry-After, nothing written, no race past it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from pydantic import ValidationError

from moecomp.persistence.database import Database
from moecomp.persistence.models import Job, JobStatus
from moecomp.settings import Settings
from tests.api.helpers import count, job_body, queued_job_ids, set_status

LIMIT = 3


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_active_jobs_per_team": LIMIT})


def submit(client: TestClient, auth: dict[str, str], key: str | None = None) -> Response:
    headers = auth | ({"Idempotency-Key": key} if key else {})
    return client.post("/v1/jobs", json=job_body(), headers=headers)


def fill(client: TestClient, auth: dict[str, str], n: int = LIMIT) -> list[str]:
    responses = [submit(client, auth) for _ in range(n)]
    assert [r.status_code for r in responses] == [201] * n
    return [r.json()["id"] for r in responses]


def assert_refused(response: Response, active: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "30"
    assert response.json() == {
        "detail": f"your team has {active} jobs queued or running and may have at most {LIMIT} at once; "
        "wait for one to end (or cancel one), then submit again"
    }


def test_a_submission_past_the_limit_is_429_and_writes_nothing(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], db: Database, redis_url: str
) -> None:
    ids = fill(client, auth)
    assert_refused(submit(client, auth), active=LIMIT)
    assert count(db, Job) == LIMIT  # no row for the refused request
    assert queued_job_ids(redis_url) == ids  # and nothing enqueued
    assert submit(client, other_auth).status_code == 201  # the limit is per team


def test_running_jobs_count_and_ended_jobs_free_their_slot(
    client: TestClient, auth: dict[str, str], db: Database
) -> None:
    ids = fill(client, auth)
    set_status(db, ids[0], JobStatus.running)
    assert_refused(submit(client, auth), active=LIMIT)
    set_status(db, ids[0], JobStatus.succeeded)
    ids.append(submit(client, auth).json()["id"])
    set_status(db, ids[1], JobStatus.failed)
    ids.append(submit(client, auth).json()["id"])
    assert client.post(f"/v1/jobs/{ids[2]}/cancel", headers=auth).json()["status"] == "cancelled"
    last = submit(client, auth)
    assert last.status_code == 201
    assert_refused(submit(client, auth), active=LIMIT)
    assert count(db, Job) == LIMIT + 3


def test_an_idempotent_replay_at_the_limit_returns_the_original_job(
    client: TestClient, auth: dict[str, str], db: Database
) -> None:
    first = submit(client, auth, key="nightly-1")
    fill(client, auth, LIMIT - 1)
    again = submit(client, auth, key="nightly-1")
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    assert_refused(submit(client, auth, key="nightly-2"), active=LIMIT)
    assert count(db, Job) == LIMIT


def race(client: TestClient, auth: dict[str, str], n: int, key: str | None = None) -> list[Response]:
    """``n`` submissions sent at once from ``n`` threads (a barrier lines them up)."""
    barrier = threading.Barrier(n)

    def one(_: int) -> Response:
        barrier.wait()
        return submit(client, auth, key)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_racing_submissions_never_admit_more_than_the_limit(
    client: TestClient, auth: dict[str, str], db: Database, redis_url: str
) -> None:
    fill(client, auth, 1)
    responses = race(client, auth, 20)
    codes = sorted(r.status_code for r in responses)
    assert codes == [201] * (LIMIT - 1) + [429] * (20 - LIMIT + 1), [r.text for r in responses if r.status_code >= 500]
    assert count(db, Job) == LIMIT
    assert len(queued_job_ids(redis_url)) == LIMIT


def test_racing_replays_of_one_key_at_the_last_slot_make_one_job(
    client: TestClient, auth: dict[str, str], db: Database, redis_url: str
) -> None:
    fill(client, auth, LIMIT - 1)
    responses = race(client, auth, 10, key="retry-storm")
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert count(db, Job) == LIMIT
    assert len(queued_job_ids(redis_url)) == LIMIT  # the replays enqueued nothing


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="max_active_jobs_per_team"):
        Settings(max_active_jobs_per_team=0)
