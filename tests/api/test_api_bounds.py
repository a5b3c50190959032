"""Every number, string and list a request controls is bounded: one past each bound is a 422 at its field.

The bounds keep one request from asking for unbounded memory or disk (calibration tokens, fidelity reference,
KV cache, page sizes, body size). Jobs name a hub model here, so that only the bounds are checked (a local
model's config would also refuse counts beyond its own shape, at the same field).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient

from moecomp.api.body_limit import MAX_BODY_BYTES
from moecomp.api.routes.jobs import MAX_SEQ
from moecomp.api.services.events import MAX_EVENTS
from moecomp.api.services.jobs import MAX_PAGE
from moecomp.compression.evaluation.spec import MAX_DECODE_POSITIONS, MAX_FIDELITY_ENTRIES
from moecomp.compression.recipe import MAX_CALIBRATION_TOKENS
from moecomp.settings import Settings

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # validation is database-blind

HUB = {"kind": "hub", "id": "org/model"}
STAGE = ("body", "recipe", "stages", 0)
CALIBRATION = ("body", "recipe", "calibration")
EVALUATION = ("body", "evaluation")
SPEED = (*EVALUATION, "speed_settings")


def body(**changes: Any) -> dict[str, Any]:
    """A job request on a hub model with ``changes`` applied (keys are dotted paths into the body)."""
    request: dict[str, Any] = {"model": dict(HUB), "recipe": {"stages": []}, "evaluation": {}}
    for dotted, value in changes.items():
        node = request
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)
    return request


def stage(method: str, **fields: Any) -> dict[str, Any]:
    return {"recipe.stages": [{"method": method, **fields}]}


# name: (request changes, the loc of the refusal)
OVER = {
    "calibration samples": ({"recipe.calibration.samples": 4097}, (*CALIBRATION, "samples")),
    "calibration seq_len": ({"recipe.calibration.seq_len": 32769}, (*CALIBRATION, "seq_len")),
    "calibration tokens": ({"recipe.calibration": {"samples": 4096, "seq_len": 257}}, CALIBRATION),
    "calibration sources": ({"recipe.calibration.sources": ["bundled:kjv"] * 17}, (*CALIBRATION, "sources")),
    "calibration source name": ({"recipe.calibration.sources": ["x" * 1001]}, (*CALIBRATION, "sources", 0)),
    "stages": ({"recipe.stages": [{"method": "rtn"}] * 33}, ("body", "recipe", "stages")),
    "expert_drop keep": (stage("expert_drop", keep=1025), (*STAGE, "expert_drop", "keep")),
    "block_drop drop": (stage("block_drop", drop=257), (*STAGE, "block_drop", "drop")),
    "layer_drop drop": (stage("layer_drop", drop=257), (*STAGE, "layer_drop", "drop")),
    "sparsegpt block_size": (stage("sparsegpt", block_size=4097), (*STAGE, "sparsegpt", "block_size")),
    "magnitude sparsity": (stage("magnitude", sparsity=1.0), (*STAGE, "magnitude", "sparsity")),
    "wanda scope list": (stage("wanda", scope=["attention"] * 4), (*STAGE, "wanda", "scope")),
    "gptq block_size": (stage("gptq", block_size=4097), (*STAGE, "gptq", "block_size")),
    "gptq group_size": (stage("gptq", group_size=8193), (*STAGE, "gptq", "group_size")),
    "gptq dampening_frac": (stage("gptq", dampening_frac=1.0), (*STAGE, "gptq", "dampening_frac")),
    "awq n_grid": (stage("awq", n_grid=101), (*STAGE, "awq", "n_grid")),
    "perplexity sources": ({"evaluation.perplexity": ["bundled:heldout"] * 9}, (*EVALUATION, "perplexity")),
    "perplexity source name": ({"evaluation.perplexity": ["x" * 1001]}, (*EVALUATION, "perplexity", 0)),
    "evaluation seq_len": ({"evaluation.seq_len": 32769}, (*EVALUATION, "seq_len")),
    "evaluation max_tokens": ({"evaluation.max_tokens": 4_000_001}, (*EVALUATION, "max_tokens")),
    "tasks": ({"evaluation.tasks": ["t"] * 33}, (*EVALUATION, "tasks")),
    "task name": ({"evaluation.tasks": ["t" * 201]}, (*EVALUATION, "tasks", 0)),
    "task_limit": ({"evaluation.task_limit": 100_001}, (*EVALUATION, "task_limit")),
    "task_batch_size": ({"evaluation.task_batch_size": 513}, (*EVALUATION, "task_batch_size")),
    "fidelity_tokens": ({"evaluation.fidelity_tokens": 1_000_001}, (*EVALUATION, "fidelity_tokens")),
    "fidelity_topk": ({"evaluation.fidelity_topk": 1_000_001}, (*EVALUATION, "fidelity_topk")),
    "fidelity entries": (
        {"evaluation.fidelity_tokens": 16384, "evaluation.fidelity_topk": MAX_FIDELITY_ENTRIES // 16384 + 1},
        EVALUATION,
    ),
    "prefill_tokens": ({"evaluation.speed_settings.prefill_tokens": 32769}, (*SPEED, "prefill_tokens")),
    "decode_tokens": ({"evaluation.speed_settings.decode_tokens": 4097}, (*SPEED, "decode_tokens")),
    "decode_prompt_tokens": (
        {"evaluation.speed_settings.decode_prompt_tokens": 32769},
        (*SPEED, "decode_prompt_tokens"),
    ),
    "decode batch sizes": ({"evaluation.speed_settings.decode_batch_sizes": [1] * 9}, (*SPEED, "decode_batch_sizes")),
    "decode batch size": ({"evaluation.speed_settings.decode_batch_sizes": [257]}, (*SPEED, "decode_batch_sizes", 0)),
    "decode KV positions": (
        {"evaluation.speed_settings": {"decode_batch_sizes": [256], "decode_prompt_tokens": 4033, "decode_tokens": 64}},
        SPEED,
    ),
    "warmup": ({"evaluation.speed_settings.warmup": 11}, (*SPEED, "warmup")),
    "repeats": ({"evaluation.speed_settings.repeats": 21}, (*SPEED, "repeats")),
    "gate accuracy": ({"evaluation.gate.min_accuracy_pct": 1000.5}, (*EVALUATION, "gate", "min_accuracy_pct")),
    "gate perplexity": (
        {"evaluation.gate.max_perplexity_increase_pct": 1e6 + 1},
        (*EVALUATION, "gate", "max_perplexity_increase_pct"),
    ),
    "gate agreement": ({"evaluation.gate.min_top1_agreement": 1.01}, (*EVALUATION, "gate", "min_top1_agreement")),
    "local path": ({"model": {"kind": "local", "path": "x" * 1001}}, ("body", "model", "local", "path")),
    "hub id": ({"model": {"kind": "hub", "id": "org/" + "m" * 97}}, ("body", "model", "hub", "id")),
    "hub revision": ({"model": {**HUB, "revision": "r" * 101}}, ("body", "model", "hub", "revision")),
    "upload id": ({"model": {"kind": "upload", "upload_id": "a" * 33}}, ("body", "model", "upload", "upload_id")),
}


def test_one_past_each_bound_is_a_422_at_its_field(client: TestClient, auth: dict[str, str]) -> None:
    wrong = {}  # one app for the whole table (a fresh one per case would triple this file's time)
    for case, (changes, loc) in OVER.items():
        response = client.post("/v1/jobs", json=body(**changes), headers=auth)
        locs = [tuple(e["loc"]) for e in response.json()["detail"]] if response.status_code == 422 else None
        if locs != [loc]:
            wrong[case] = (response.status_code, response.text[:300])
    assert wrong == {}


# The products are capped exactly at their bounds: a request right at each one is accepted.
AT = {
    "calibration tokens": {"recipe.calibration": {"samples": 4096, "seq_len": MAX_CALIBRATION_TOKENS // 4096}},
    "fidelity entries": {
        "evaluation.fidelity_tokens": 16384,
        "evaluation.fidelity_topk": MAX_FIDELITY_ENTRIES // 16384,
    },
    "decode KV positions": {
        "evaluation.speed_settings": {
            "decode_batch_sizes": [256],
            "decode_prompt_tokens": MAX_DECODE_POSITIONS // 256 - 64,
            "decode_tokens": 64,
        }
    },
    "counts": {"recipe.stages": [{"method": "block_drop", "drop": 256}, {"method": "expert_drop", "keep": 1024}]},
}


@pytest.mark.parametrize("case", sorted(AT))
def test_each_product_bound_itself_is_accepted(client: TestClient, auth: dict[str, str], case: str) -> None:
    response = client.post("/v1/jobs", json=body(**AT[case]), headers=auth)
    assert response.status_code == 201, response.text


def test_non_finite_numbers_are_a_422_not_a_500(client: TestClient, auth: dict[str, str]) -> None:
    """Python's JSON parser reads NaN and Infinity, which no bounded field accepts and no 422 may fail to echo."""
    for literal in ("Infinity", "NaN", "-Infinity"):
        raw = (
            '{"model": {"kind": "hub", "id": "org/model"}, "recipe": {}, '
            '"evaluation": {"gate": {"max_perplexity_increase_pct": %s}}}'
        )
        response = client.post("/v1/jobs", content=raw % literal, headers={**auth, "Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == [*EVALUATION, "gate", "max_perplexity_increase_pct"]


@pytest.mark.parametrize(
    ("url", "headers", "loc"),
    [
        ("/v1/jobs?limit=0", {}, ["query", "limit"]),
        (f"/v1/jobs?limit={MAX_PAGE + 1}", {}, ["query", "limit"]),
        ("/v1/jobs?cursor=" + "c" * 501, {}, ["query", "cursor"]),
        ("/v1/jobs?model=" + "m" * 1001, {}, ["query", "model"]),
        (f"/v1/jobs/{'0' * 32}/events?after={MAX_SEQ + 1}", {}, ["query", "after"]),
        (f"/v1/jobs/{'0' * 32}/events?limit={MAX_EVENTS + 1}", {}, ["query", "limit"]),
        (f"/v1/jobs/{'0' * 32}/events/stream", {"Last-Event-ID": str(MAX_SEQ + 1)}, ["header", "last-event-id"]),
    ],
)
def test_query_and_header_bounds(
    client: TestClient, auth: dict[str, str], url: str, headers: dict[str, str], loc: list[str]
) -> None:
    response = client.get(url, headers={**auth, **headers})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_idempotency_key_length(client: TestClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/jobs", json=body(), headers={**auth, "Idempotency-Key": "k" * 201})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_a_body_over_the_cap_is_413_before_it_is_read_whole(client: TestClient, auth: dict[str, str]) -> None:
    padding = "x" * MAX_BODY_BYTES
    declared = client.post("/v1/jobs", json={**body(), "padding": padding}, headers=auth)
    assert declared.status_code == 413 and "larger than" in declared.json()["detail"]

    def chunks():  # type: ignore[no-untyped-def]  # chunked: no Content-Length to refuse up front
        yield b'{"padding": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    chunked = client.post("/v1/jobs", content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert chunked.status_code == 413 and "larger than" in chunked.json()["detail"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("calib.txt", "absolute path"),
        ("/etc/hostname.txt", "allowed model root"),
        ("bundled:nope", "unknown bundled text"),
        ("hub:", "hub source"),
        ("hub:/srv/other-team:train", "not a path"),
    ],
)
def test_text_sources_outside_the_allowed_places_are_refused(
    client: TestClient, auth: dict[str, str], source: str, message: str
) -> None:
    for field, loc in (
        ("recipe.calibration.sources", (*CALIBRATION, "sources", 0)),
        ("evaluation.perplexity", (*EVALUATION, "perplexity", 0)),
    ):
        response = client.post("/v1/jobs", json=body(**{field: [source]}), headers=auth)
        assert response.status_code == 422, response.text
        error = response.json()["detail"][0]
        assert tuple(error["loc"]) == loc and message in error["msg"]


def test_a_text_file_under_an_allowed_root_is_accepted(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    text = settings.allowed_model_roots[1] / "calib.txt"
    text.write_text("some calibration text\n")
    response = client.post("/v1/jobs", json=body(**{"recipe.calibration.sources": [str(text)]}), headers=auth)
    assert response.status_code == 201, response.text
    inside_data = settings.data_dir / "uploads" / "secret.txt"  # the data folder is never a text source
    inside_data.parent.mkdir(parents=True, exist_ok=True)
    inside_data.write_text("another team's text\n")
    settings.allowed_model_roots.append(settings.data_dir)
    refused = client.post("/v1/jobs", json=body(**{"recipe.calibration.sources": [str(inside_data)]}), headers=auth)
    assert refused.status_code == 422, refused.text
