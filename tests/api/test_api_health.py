"""/readyz (database, broker, workers), /metrics (jobs by status, queue depth, durations, workers), /v1/methods."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from moecomp.api.app import create_app
from moecomp.compression.adapters import FAMILIES
from moecomp.persistence import workers
from moecomp.persistence.database import Database
from moecomp.persistence.models import Job, JobStatus
from moecomp.settings import Settings
from tests.api.helpers import job_body, set_status


def test_readyz_reports_each_dependency(client: TestClient) -> None:
    response = client.get("/readyz")
    body = {"database": True, "broker": True, "workers": 0, "reasons": []}  # workers are another deployment
    assert response.status_code == 200 and response.json() == body


def test_readyz_is_503_when_the_broker_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["broker"] is False
    assert response.json()["reasons"] == ["the broker is not reachable"]


def test_readyz_is_503_when_the_database_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    with TestClient(create_app(down)) as client:
        response = client.get("/readyz")
    body = {"database": False, "broker": True, "workers": 0, "reasons": ["the database is not reachable"]}
    assert response.status_code == 503 and response.json() == body


def test_readyz_where_a_worker_is_required_names_the_missing_one_until_it_beats(settings: Settings, db: Database):
    with TestClient(create_app(settings, require_worker=True)) as client:
        missing = client.get("/readyz")
        with db.session() as session:
            workers.beat(session, "host:1")
        ready = client.get("/readyz")
        with db.session() as session:
            workers.forget(session, "host:1")
        gone = client.get("/readyz")
    assert missing.status_code == gone.status_code == 503
    assert missing.json()["workers"] == 0 and missing.json()["reasons"] == [
        "no worker is alive: none has sent a heartbeat in the last 30 s"
    ]
    assert ready.status_code == 200 and ready.json() == {"database": True, "broker": True, "workers": 1, "reasons": []}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_jobs_and_durations(client: TestClient, auth: dict[str, str], db: Database) -> None:
    ids = [client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"] for _ in range(4)]
    set_status(db, ids[0], JobStatus.running)
    set_status(db, ids[1], JobStatus.succeeded)
    set_status(db, ids[2], JobStatus.failed)
    with db.session() as session:  # one finished job that ran 45 s, one that ran a fraction of a second
        job = session.get(Job, ids[1])
        assert job is not None and job.finished_at is not None
        job.started_at = job.finished_at - timedelta(seconds=45)
        session.commit()
    with db.session() as session:
        workers.beat(session, "host:1")
    samples = _samples(client.get("/metrics").text)
    assert samples[("moecomp_workers_alive", ())] == 1
    for status, n in [("queued", 1), ("running", 1), ("succeeded", 1), ("failed", 1), ("cancelled", 0)]:
        assert samples[("moecomp_jobs", (("status", status),))] == n
    assert samples[("moecomp_queue_depth", ())] == 1
    assert samples[("moecomp_job_duration_seconds_bucket", (("le", "10.0"),))] == 1
    assert samples[("moecomp_job_duration_seconds_bucket", (("le", "60.0"),))] == 2
    assert samples[("moecomp_job_duration_seconds_count", ())] == 2
    assert 44.99 < samples[("moecomp_job_duration_seconds_sum", ())] < 47  # julianday keeps ~ms


def test_methods_list_every_stage_with_schema_and_defaults(client: TestClient, auth: dict[str, str]) -> None:
    body = client.get("/v1/methods", headers=auth).json()
    methods = {m["name"]: m for m in body["methods"]}
    assert {"expert_drop", "layer_drop", "block_drop"} <= set(methods)
    expert = methods["expert_drop"]
    assert expert["family"] == "trimming" and "router" in expert["description"]
    assert expert["defaults"] == {"method": "expert_drop", "mode": "layerwise", "keep": 6, "iterative": False}
    assert expert["schema"]["properties"]["keep"]["minimum"] == 1
    assert all(m["family"] in ("trimming", "slimming") for m in body["methods"])
    assert "stages" in body["recipe_schema"]["properties"] and "gate" in body["evaluation_schema"]["properties"]


def test_methods_list_the_supported_families_with_what_their_adapters_refuse(
    client: TestClient, auth: dict[str, str]
) -> None:
    families = {f["model_type"]: f for f in client.get("/v1/methods", headers=auth).json()["families"]}
    assert list(families) == sorted(FAMILIES)
    for model_type, family in FAMILIES.items():
        refused = families[model_type]["refused"]
        assert [(r["applies_to"], r["reason"]) for r in refused] == list(family.refused)
        checkpoints = families[model_type]["refused_checkpoints"]
        assert [(r["applies_to"], r["reason"]) for r in checkpoints] == list(family.refused_quantizations)
        assert families[model_type]["dequantized_checkpoints"] == list(family.dequantize_on_read)
    assert [r["applies_to"] for r in families["gpt_oss"]["refused"]] == ["slimming:llmcompressor"]
    gpt_oss = families["gpt_oss"]
    assert gpt_oss["refused_checkpoints"] == [] and gpt_oss["dequantized_checkpoints"] == ["mxfp4"]
    assert families["mixtral"]["refused"] == [] and families["mixtral"]["refused_checkpoints"] == []


def test_metrics_count_requests_by_route_template(client: TestClient, auth: dict[str, str]) -> None:
    job_id = client.post("/v1/jobs", json=job_body(), headers=auth).json()["id"]
    for _ in range(3):
        client.get(f"/v1/jobs/{job_id}", headers=auth)
    client.get("/v1/jobs/" + "0" * 32, headers=auth)
    client.get("/nowhere")
    samples = _samples(client.get("/metrics").text)
    route = "/v1/jobs/{job_id}"
    assert samples[("moecomp_http_requests_total", (("method", "GET"), ("route", route), ("status", "200")))] == 3
    assert samples[("moecomp_http_requests_total", (("method", "GET"), ("route", route), ("status", "404")))] == 1
    assert samples[("moecomp_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert samples[("moecomp_http_request_duration_seconds_count", (("method", "GET"), ("route", route)))] == 4
