"""Schema-driven fuzzing of the whole OpenAPI surface (schemathesis) on the real app and database.

Every operation gets schema-valid (positive) and schema-invalid (negative) requests, with a team's key
and without one; schemathesis's checks then hold the answers to the document: no 5xx, only declared
status codes, bodies and content types as declared, schema-valid data accepted, invalid data refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans

from moecomp.api.app import create_app
from moecomp.api.services.uploads import ACCEPTED_TYPES
from moecomp.settings import Settings
from tests.api.helpers import job_body
from tests.api.test_api_uploads import HOSTILE, model_tar

# Few examples per operation (the whole file runs in well under a minute on two cores), derandomized so that
# CI replays the same cases; no deadline (a shared machine stalls now and then).
FUZZ = settings(
    max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429"]  # schemathesis's default for schema-valid data
# Schema-valid requests that these operations refuse for reasons a schema cannot state: a path or upload that
# does not exist, a recipe the model cannot take, a cursor this API never issued, bytes that are no tar or
# unpack past the size limit.
REFUSED_BY_STATE = {"POST /v1/jobs": ["422"], "GET /v1/jobs": ["422"], "POST /v1/models": ["413", "422"]}
# Upload bodies: random bytes, a good model archive, and each hostile archive of the upload tests.
TAR_BODIES = st.one_of(
    st.binary(max_size=4096), st.sampled_from([model_tar(), *(body for body, _ in HOSTILE.values())])
)
schemathesis.openapi.media_type(ACCEPTED_TYPES[0], TAR_BODIES, aliases=ACCEPTED_TYPES[1:])


def fuzz_config() -> SchemathesisConfig:
    operations = [
        {"include-name": label, "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED + extra}}}
        for label, extra in REFUSED_BY_STATE.items()
    ]
    return SchemathesisConfig.from_dict({"operations": operations})


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    yield create_app(settings)
    shutdown_lifespans()  # schemathesis keeps the apps it started alive for the process otherwise


def fuzz(app: FastAPI, headers: dict[str, str], mode: GenerationMode, **fixed: Any) -> dict[str, set[int]]:
    """Fuzz every operation (with path parameters ``fixed`` where it has them); the statuses seen per operation.

    Negative mode leaves out operations that have nothing to make invalid (no parameters, or free-form strings).
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=fuzz_config())
    schema.config.generation.update(with_security_parameters=False)
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        path_parameters = {k: v for k, v in fixed.items() if f"{{{k}}}" in operation.path}
        if fixed and not path_parameters:
            continue
        if mode == GenerationMode.NEGATIVE and not (operation.query or operation.headers or operation.body):
            continue  # only free-form path strings: nothing is invalid
        label = operation.label

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
        def run(case: schemathesis.Case) -> None:
            seen.setdefault(case.operation.label, set()).add(case.call_and_validate(headers=dict(headers)).status_code)

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, label
    return seen


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_with_a_key(app: FastAPI, auth: dict[str, str], mode: GenerationMode) -> None:
    seen = fuzz(app, auth, mode)
    assert "POST /v1/jobs" in seen and "GET /v1/jobs" in seen  # the negative pass reaches the bodies and queries
    if mode == GenerationMode.POSITIVE:
        assert len(seen) >= 15 and "POST /v1/models" in seen  # every operation


def test_fuzz_on_an_existing_job(app: FastAPI, auth: dict[str, str]) -> None:
    """The job routes with the id of a real job, so that their success bodies are checked against the schema."""
    with TestClient(app) as client:
        job = client.post("/v1/jobs", json=job_body(), headers=auth).json()
    seen = fuzz(app, auth, GenerationMode.POSITIVE, job_id=job["id"])
    assert 200 in seen["GET /v1/jobs/{job_id}"] and 200 in seen["GET /v1/jobs/{job_id}/events"]


def test_fuzz_without_a_key(app: FastAPI) -> None:
    """No key: every /v1 operation answers 401 (never a 5xx, never data); the probes stay public.

    A body that cannot be parsed at all is refused (400/422) before the key is looked at.
    """
    seen = fuzz(app, {}, GenerationMode.POSITIVE)
    assert len(seen) >= 15
    for label, statuses in seen.items():
        if " /v1/" in label:
            assert statuses <= {400, 401, 422} and 401 in statuses, (label, statuses)
