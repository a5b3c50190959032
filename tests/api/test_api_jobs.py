"""POST/GET /v1/jobs, idempotency, pagination, filters, cancel; every refusal leaves the database unchanged."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from moecomp.assets import MODELS
from moecomp.persistence.database import Database
from moecomp.persistence.models import Job, JobStatus
from moecomp.settings import Settings
from tests.api.helpers import count, job_body, queued_job_ids, set_status


def test_create_stores_a_queued_job_and_enqueues_it_after_commit(
    client: TestClient, auth: dict[str, str], db: Database, redis_url: str
) -> None:
    response = client.post("/v1/jobs", json=job_body(), headers=auth)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["progress"] == 0 and job["attempts"] == 0
    assert job["model"] == {"kind": "local", "path": str((MODELS / "tiny-mixtral").resolve())}
    assert job["recipe"]["stages"] == [{"method": "expert_drop", "mode": "layerwise", "keep": 6, "iterative": False}]
    assert job["evaluation"]["perplexity"] == ["bundled:heldout"]  # defaults filled in
    assert job["error"] is None and job["cancel_requested"] is False
    assert queued_job_ids(redis_url) == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json() == job


def test_idempotent_replay_returns_the_first_job(
    client: TestClient, auth: dict[str, str], db: Database, redis_url: str
) -> None:
    headers = {**auth, "Idempotency-Key": "run-42"}
    first = client.post("/v1/jobs", json=job_body(), headers=headers)
    # The same request spelled differently (defaults written out) is the same request.
    body = job_body()
    body["recipe"]["version"] = 1  # type: ignore[index]
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert count(db, Job) == 1
    assert queued_job_ids(redis_url) == [first.json()["id"]]  # enqueued once


def test_same_idempotency_key_with_another_body_is_refused(
    client: TestClient, auth: dict[str, str], db: Database
) -> None:
    headers = {**auth, "Idempotency-Key": "run-43"}
    assert client.post("/v1/jobs", json=job_body(keep=6), headers=headers).status_code == 201
    response = client.post("/v1/jobs", json=job_body(keep=4), headers=headers)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["header", "idempotency-key"] and "different request body" in error["msg"]
    assert count(db, Job) == 1


def test_idempotency_keys_are_per_team(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], db: Database
) -> None:
    a = client.post("/v1/jobs", json=job_body(), headers={**auth, "Idempotency-Key": "k"})
    b = client.post("/v1/jobs", json=job_body(), headers={**other_auth, "Idempotency-Key": "k"})
    assert (a.status_code, b.status_code) == (201, 201) and a.json()["id"] != b.json()["id"]


def test_pages_walk_all_jobs_newest_first(client: TestClient, auth: dict[str, str], other_auth: dict[str, str]) -> None:
    ids = [client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"] for _ in range(7)]
    client.post("/v1/jobs", json=job_body(), headers=other_auth)  # never listed for team a
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params, headers=auth).json()
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids)) and pages == 3


def test_filters_by_status_and_model(
    client: TestClient, auth: dict[str, str], db: Database, tiny_model_copy: Path
) -> None:
    mixtral = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    copy = client.post("/v1/jobs", json=job_body(path=str(tiny_model_copy)), headers=auth).json()["id"]
    set_status(db, copy, JobStatus.running)

    def listed(**params: str) -> list[str]:
        response = client.get("/v1/jobs", params=params, headers=auth)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["items"]]

    assert listed(status="running") == [copy]
    assert listed(status="queued") == [mixtral]
    assert listed(model="tiny-mixtral") == [mixtral]
    assert listed(model=str(tiny_model_copy)) == [copy]
    assert listed(model="100%_") == []  # LIKE wildcards are literal


def _cursor(created: str, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, job_id]).encode()).decode()


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"model": "a\x00b"}, ["query", "model"]),
        ({"cursor": _cursor("2026-01-01T00:00:00", "a\x00")}, ["query", "cursor"]),
        ({"status": "sleeping"}, ["query", "status"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"cursor": "not-a-cursor"}, ["query", "cursor"]),
    ],
)
def test_bad_listing_parameters_answer_422(
    client: TestClient, auth: dict[str, str], params: dict[str, object], loc: list[str]
) -> None:
    response = client.get("/v1/jobs", params=params, headers=auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == loc


def test_cancel_queued_running_and_final(client: TestClient, auth: dict[str, str], db: Database) -> None:
    queued, running, done = (client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"] for _ in range(3))
    set_status(db, running, JobStatus.running)
    set_status(db, done, JobStatus.succeeded)

    cancelled = client.post(f"/v1/jobs/{queued}/cancel", headers=auth).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert cancelled["error"] == {"code": "cancelled", "message": "cancelled before it started"}
    [event] = client.get(f"/v1/jobs/{queued}/events", headers=auth).json()["items"]
    assert (event["seq"], event["kind"], event["data"]) == (1, "message", {"text": "cancelled before it started"})
    flagged = client.post(f"/v1/jobs/{running}/cancel", headers=auth).json()
    assert flagged["status"] == "running" and flagged["cancel_requested"] is True
    conflict = client.post(f"/v1/jobs/{done}/cancel", headers=auth)
    assert conflict.status_code == 409 and conflict.json() == {"detail": "job is already succeeded"}
    assert client.post(f"/v1/jobs/{queued}/cancel", headers=auth).status_code == 409


@pytest.mark.parametrize("job_id", ["0" * 32, "a%00b", "x" * 500, "%E2%9C%93"])
def test_unknown_or_malformed_ids_are_404(client: TestClient, auth: dict[str, str], job_id: str) -> None:
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 404
    assert client.get(f"/v1/artifacts/{job_id}/content", headers=auth).status_code == 404


def test_another_teams_job_is_not_found(client: TestClient, auth: dict[str, str], other_auth: dict[str, str]) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    for method, path in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/artifacts"),
        ("GET", "/events/stream"),
    ]:
        response = client.request(method, f"/v1/jobs/{job_id}{path}", headers=other_auth)
        assert response.status_code == 404 and response.json() == {"detail": "job not found"}, (method, path)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["cancel_requested"] is False


def _outside_symlink(root: Path, tmp_path: Path) -> str:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    return str(root / "escape")


BAD_BODIES = {
    "unknown method": (
        lambda: {**job_body(), "recipe": {"stages": [{"method": "magic"}]}},
        ["body", "recipe", "stages", 0],
    ),
    "out of range": (lambda: job_body(keep=0), ["body", "recipe", "stages", 0, "expert_drop", "keep"]),
    "more experts than the model has": (lambda: job_body(keep=9), ["body", "recipe", "stages", 0, "keep"]),
    "keeping every expert": (lambda: job_body(keep=8), ["body", "recipe", "stages", 0, "keep"]),
    "fewer experts than top-k": (lambda: job_body(keep=1), ["body", "recipe", "stages", 0, "keep"]),
    "every moe layer": (
        lambda: {**job_body(), "recipe": {"stages": [{"method": "layer_drop", "drop": 8}]}},
        ["body", "recipe", "stages", 0, "drop"],
    ),
    "every block": (
        lambda: {**job_body(), "recipe": {"stages": [{"method": "block_drop", "drop": 8}]}},
        ["body", "recipe", "stages", 0, "drop"],
    ),
    "stages add up past the model": (
        lambda: {
            **job_body(),
            "recipe": {"stages": [{"method": "block_drop", "drop": 6}, {"method": "layer_drop", "drop": 2}]},
        },
        ["body", "recipe", "stages", 1, "drop"],
    ),
    "slimming after quantization": (
        lambda: {**job_body(), "recipe": {"stages": [{"method": "gptq"}, {"method": "wanda"}]}},
        ["body", "recipe", "stages"],
    ),
    "unknown field": (lambda: {**job_body(), "priority": 1}, ["body", "priority"]),
    "path outside the roots": (lambda: job_body(path="/etc"), ["body", "model", "path"]),
    "traversal": (lambda: job_body(path="tiny-mixtral/../../../../.."), ["body", "model", "path"]),
    "no config.json": (lambda: job_body(path="."), ["body", "model", "path"]),
    "nul byte in path": (lambda: job_body(path="tiny\x00mixtral"), ["body", "model", "path"]),
    "path too long": (lambda: job_body(path="x" * 999), ["body", "model", "path"]),
    "bad hub id": (
        lambda: {**job_body(), "model": {"kind": "hub", "id": "../etc/passwd"}},
        ["body", "model", "hub", "id"],
    ),
    "unknown upload": (
        lambda: {**job_body(), "model": {"kind": "upload", "upload_id": "0" * 32}},
        ["body", "model", "upload_id"],
    ),
    "unknown source kind": (lambda: {**job_body(), "model": {"kind": "ftp"}}, ["body", "model"]),
    "calibration too big": (
        lambda: {**job_body(), "recipe": {"calibration": {"samples": 10**9}}},
        ["body", "recipe", "calibration", "samples"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_job_bodies_answer_422_at_the_field_and_store_nothing(
    client: TestClient, auth: dict[str, str], db: Database, redis_url: str, case: str
) -> None:
    make, loc = BAD_BODIES[case]
    response = client.post("/v1/jobs", json=make(), headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert count(db, Job) == 0 and queued_job_ids(redis_url) == []


def test_symlink_escaping_a_root_is_refused(
    client: TestClient, auth: dict[str, str], db: Database, tmp_path: Path
) -> None:
    root = client.app.state.settings.allowed_model_roots[1]  # type: ignore[attr-defined]
    response = client.post("/v1/jobs", json=job_body(path=_outside_symlink(root, tmp_path)), headers=auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "model", "path"]
    assert count(db, Job) == 0


def test_recipes_are_checked_against_each_family_through_the_adapter_table(
    client: TestClient, auth: dict[str, str], settings: Settings, tiny_qwen2_moe_dir: Path
) -> None:
    folder = settings.allowed_model_roots[1] / "qwen"
    folder.mkdir()
    shutil.copy(tiny_qwen2_moe_dir / "config.json", folder / "config.json")  # 16 experts, top-4, 8 layers

    def submit(*stages: dict[str, object]) -> Response:
        body = {"model": {"kind": "local", "path": str(folder)}, "recipe": {"stages": list(stages)}}
        return client.post("/v1/jobs", json=body, headers=auth)

    assert submit({"method": "expert_drop", "keep": 3}).json()["detail"][0]["loc"][-1] == "keep"  # below top-4
    assert submit({"method": "expert_drop", "keep": 12}, {"method": "layer_drop", "drop": 7}).status_code == 201

    llama = settings.allowed_model_roots[1] / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    body = {"model": {"kind": "local", "path": str(llama)}, "recipe": {"stages": [{"method": "block_drop", "drop": 1}]}}
    refused = client.post("/v1/jobs", json=body, headers=auth)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "model"]
    assert "not a supported MoE family" in refused.json()["detail"][0]["msg"]
    body["recipe"] = {"stages": []}  # re-export and evaluation need no adapter
    assert client.post("/v1/jobs", json=body, headers=auth).status_code == 201


def test_hub_sources_are_stored_as_given(client: TestClient, auth: dict[str, str]) -> None:
    body = {**job_body(), "model": {"kind": "hub", "id": "mistralai/Mixtral-8x7B-v0.1", "revision": "main"}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 201 and response.json()["model"] == body["model"]


def test_malformed_json_is_422_not_500(client: TestClient, auth: dict[str, str], db: Database) -> None:
    response = client.post("/v1/jobs", content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 422 and count(db, Job) == 0
