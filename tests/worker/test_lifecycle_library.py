"""The task body with the real library: expert drop on tiny-mixtral, the quality gate, a cancel mid-engine, and a
[layer_drop, gptq] job through the streamed slimming pass."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, update

from moecomp.persistence.models import Artifact, Job, JobEvent, JobStatus
from moecomp.worker.lifecycle import run_job_once
from tests.worker.helpers import EVAL_SMALL, get_job

DROP = {"stages": [{"method": "expert_drop", "keep": 4}], "calibration": {"samples": 8, "seq_len": 128}}
# Enough tokens that one layer takes longer than the worker's once-a-second cancel poll even on a fast,
# idle machine; with DROP's 1k tokens all 8 layers can finish inside one poll interval.
DROP_LONG = {**DROP, "calibration": {"samples": 128, "seq_len": 256}}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_quality_gate_failure_keeps_the_artifacts(settings, db, make_job):
    job_id = make_job(recipe=DROP, evaluation={**EVAL_SMALL, "gate": {"max_perplexity_increase_pct": 0}})
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "quality_gate"), job.error_message
    assert "perplexity" in job.error_message.lower()
    with db.session() as s:
        kinds = set(s.scalars(select(Artifact.kind).where(Artifact.job_id == job_id)))
    assert {"checkpoint", "manifest", "report", "report_html", "model_card", "log"} <= kinds


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_evaluation_failure_keeps_the_checkpoint(settings, db, make_job, tmp_path):
    """The checkpoint is complete before the evaluation starts: a failure there (here a perplexity text gone from
    disk by the time the job runs) must not throw away the compression's work."""
    text = tmp_path / "heldout.txt"
    text.write_text("gone before the job runs")
    job_id = make_job(recipe=DROP, evaluation={**EVAL_SMALL, "perplexity": [str(text)]})
    text.unlink()
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "evaluation_failed"), job.error_message
    assert str(text) in job.error_message and "moecomp evaluate" in job.error_message
    with db.session() as s:
        kinds = set(s.scalars(select(Artifact.kind).where(Artifact.job_id == job_id)))
    assert {"checkpoint", "manifest", "model_card", "log"} <= kinds and "report" not in kinds


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cancel_stops_the_engine_between_layers(settings, db, make_job):
    job_id = make_job(recipe=DROP_LONG)

    def cancel_at_first_layer() -> None:
        query = select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.stage == "expert_drop")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with db.session() as s:
                if s.scalars(query.where(JobEvent.kind == "progress")).first() is not None:
                    s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
                    s.commit()
                    return
            time.sleep(0.05)

    threading.Thread(target=cancel_at_first_layer, daemon=True).start()
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert job.status == JobStatus.cancelled, (job.error_code, job.error_message)
    with db.session() as s:
        steps = [
            e.data["step"]
            for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))
            if e.kind == "progress" and e.stage == "expert_drop"
        ]
    assert steps and max(steps) < 8  # stopped before the last of the 8 layers


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_layer_drop_then_gptq_job_runs_one_streamed_pass_per_family_of_stages(settings, db, make_job):
    """The study's recipe shape through the task body: one trimming pass, one streamed slimming pass that applies
    its decisions while it reads, a packed checkpoint, and a job log of a few lines per layer (8 layers)."""
    recipe = {"stages": [{"method": "layer_drop", "drop": 2}, {"method": "gptq"}], "calibration": DROP["calibration"]}
    job_id = make_job(recipe=recipe, evaluation=EVAL_SMALL)
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    with db.session() as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)))
        kinds = set(s.scalars(select(Artifact.kind).where(Artifact.job_id == job_id)))
    assert {"checkpoint", "manifest", "report", "log"} <= kinds
    gptq = [e.data["step"] for e in events if e.kind == "progress" and e.stage == "gptq"]
    assert gptq == sorted(gptq) and gptq[-1] == 8 and len(gptq) <= 2 * 8  # the reporter may thin progress events
    assert len(events) <= 8 * 6, [(e.kind, e.stage) for e in events]
