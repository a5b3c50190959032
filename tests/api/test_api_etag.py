"""Conditional GETs of a job and of the listing: ETag, If-None-Match -> 304 without a body, new tag on any change.

Changes go through the worker's own writes (claim, set_progress, finish) and the API's cancel, so the
tests fail if any field a poller sees could change without the tag changing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from moecomp.persistence import jobs as worker_side
from moecomp.persistence.database import Database
from moecomp.persistence.jobs import Lease
from moecomp.persistence.models import JobStatus
from tests.api.helpers import job_body


def _submit(client: TestClient, auth: dict[str, str], keep: int = 6) -> str:
    response = client.post("/v1/jobs", json=job_body(keep=keep), headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _revalidate(client: TestClient, url: str, auth: dict[str, str], etag: str) -> Response:
    return client.get(url, headers={**auth, "If-None-Match": etag})


def _assert_not_modified(response: Response, etag: str) -> None:
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == "private, no-cache"


def _claim(db: Database, job_id: str) -> Lease:
    with db.session() as session:
        lease = worker_side.claim(session, job_id, "worker-1", stale_after_s=30, max_attempts=3)
    assert lease is not None
    return lease


def test_an_unchanged_job_answers_304_without_a_body(client: TestClient, auth: dict[str, str]) -> None:
    url = f"/v1/jobs/{_submit(client, auth)}"
    first = client.get(url, headers=auth)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    assert first.headers["cache-control"] == "private, no-cache"
    _assert_not_modified(_revalidate(client, url, auth, etag), etag)
    # If-None-Match's weak comparison: W/ prefixes, lists and * all match the current body.
    for header in (f"W/{etag}", f'"stale", {etag}', "*"):
        _assert_not_modified(_revalidate(client, url, auth, header), etag)
    for header in ('"stale"', etag.strip('"'), ""):
        again = _revalidate(client, url, auth, header)
        assert again.status_code == 200 and again.json() == first.json()


def test_every_worker_write_and_cancel_changes_the_etag(client: TestClient, auth: dict[str, str], db: Database) -> None:
    job_id = _submit(client, auth)
    url = f"/v1/jobs/{job_id}"
    lease = _claim(db, job_id)

    def progress(value: float, stage: str | None) -> Callable[[], None]:
        def write() -> None:
            with db.session() as session:
                assert worker_side.set_progress(session, lease, value, stage)

        return write

    def cancel() -> None:
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200

    def finish() -> None:
        with db.session() as session:
            assert worker_side.finish(session, lease, JobStatus.failed, "boom", "went wrong")

    seen: dict[str, dict[str, object]] = {}
    etag = client.get(url, headers=auth).headers["etag"]
    for change in (progress(0.25, "expert_drop"), progress(0.5, None), progress(0.5, "evaluate"), cancel, finish):
        change()
        response = _revalidate(client, url, auth, etag)
        assert response.status_code == 200, f"{change} left the ETag {etag}"
        assert response.headers["etag"] != etag
        etag = response.headers["etag"]
        seen[etag] = response.json()
        _assert_not_modified(_revalidate(client, url, auth, etag), etag)
    assert len(seen) == 5  # five different bodies, five different tags
    assert seen[etag]["status"] == "failed" and seen[etag]["error"] == {"code": "boom", "message": "went wrong"}


def test_the_listing_revalidates_per_query_and_changes_with_its_items(
    client: TestClient, auth: dict[str, str], db: Database
) -> None:
    first_id = _submit(client, auth, keep=6)
    second_id = _submit(client, auth, keep=4)
    page = client.get("/v1/jobs?limit=1", headers=auth)
    assert [job["id"] for job in page.json()["items"]] == [second_id]
    etag = page.headers["etag"]
    _assert_not_modified(_revalidate(client, "/v1/jobs?limit=1", auth, etag), etag)
    # Another page (cursor) or filter is another body, so the first page's tag does not match it.
    older = _revalidate(client, f"/v1/jobs?limit=1&cursor={page.json()['next_cursor']}", auth, etag)
    assert older.status_code == 200 and [job["id"] for job in older.json()["items"]] == [first_id]
    assert _revalidate(client, "/v1/jobs?limit=1&status=running", auth, etag).json()["items"] == []
    # A change to a listed job (the worker claims it) and a new job both give the page a new tag.
    _claim(db, second_id)
    claimed = _revalidate(client, "/v1/jobs?limit=1", auth, etag)
    assert claimed.status_code == 200 and claimed.json()["items"][0]["status"] == "running"
    third_id = _submit(client, auth, keep=5)
    newest = _revalidate(client, "/v1/jobs?limit=1", auth, claimed.headers["etag"])
    assert newest.status_code == 200 and newest.json()["items"][0]["id"] == third_id


def test_another_team_gets_404_not_304_with_the_owners_etag(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    url = f"/v1/jobs/{_submit(client, auth)}"
    etag = client.get(url, headers=auth).headers["etag"]
    for header in (etag, "*"):
        response = _revalidate(client, url, other_auth, header)
        assert response.status_code == 404 and "etag" not in response.headers
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 401


@pytest.mark.parametrize("url", ["/v1/jobs", "/v1/jobs/0123456789abcdef0123456789abcdef"])
def test_an_oversized_if_none_match_is_a_422_at_its_header(client: TestClient, auth: dict[str, str], url: str) -> None:
    response = _revalidate(client, url, auth, '"' + "a" * 5000 + '"')
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["header", "if-none-match"]


def test_the_openapi_document_declares_the_header_and_the_304(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}"):
        operation = paths[path]["get"]
        assert "304" in operation["responses"]
        assert {"name": "if-none-match", "in": "header"}.items() <= next(
            p for p in operation["parameters"] if p["name"] == "if-none-match"
        ).items()
