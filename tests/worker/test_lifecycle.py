"""The task body (run_job_once) against the real databases: claim, cancel, timeout, artifacts, errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

from sqlalchemy import update

from moecomp.compression.manifest import sha256_file
from moecomp.persistence.models import Artifact, Job, JobEvent, JobStatus
from moecomp.worker import tar_stream
from moecomp.worker.lifecycle import run_job_once
from moecomp.worker.runner import JobInput, JobOutput
from tests.worker.helpers import get_job

LAYERS = 8


def layered_body(seconds_per_layer: float, calls: list[int] | None = None):
    """A job body that walks 'layers' like the engine does: progress, then a cancel check, per layer."""

    def body(inp: JobInput, workdir: Path, reporter, device: str, cache: Path) -> JobOutput:
        ctx = reporter.context()
        for layer in range(1, LAYERS + 1):
            time.sleep(seconds_per_layer)
            ctx.progress("expert_drop", layer, LAYERS)
            if calls is not None:
                calls.append(layer)
            ctx.check_cancelled()
        checkpoint = workdir / "checkpoint"
        checkpoint.mkdir(parents=True)
        (checkpoint / "config.json").write_text("{}")
        (checkpoint / "moecomp.json").write_text('{"schema": "moecomp.manifest/1"}')
        return JobOutput(checkpoint=checkpoint, manifest={})

    return body


def served_size_and_sha256(path: Path) -> tuple[int, str]:
    """What the API serves for an artifact's recorded path: the file, or the tar of an indexed folder."""
    if not tar_stream.is_index(path):
        return path.stat().st_size, sha256_file(path)
    view, digest = tar_stream.read_index(path), hashlib.sha256()
    for chunk in view.chunks():
        digest.update(chunk)
    return view.size, digest.hexdigest()


def artifacts_of(db, job_id: str) -> list[Artifact]:
    with db.session() as s:
        return list(s.query(Artifact).filter_by(job_id=job_id).order_by(Artifact.kind))


def test_empty_recipe_runs_for_real_and_records_verified_artifacts(settings, db, make_job):
    job_id = make_job()
    lease = run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert lease is not None and job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert job.progress == 1.0 and job.attempts == 1
    kinds = {a.kind: a for a in artifacts_of(db, job_id)}
    assert {"checkpoint", "manifest", "model_card", "report", "report_html", "log"} <= set(kinds)
    for artifact in kinds.values():
        assert served_size_and_sha256(settings.artifacts_dir / artifact.relpath) == (artifact.bytes, artifact.sha256)
    card = (settings.artifacts_dir / kinds["model_card"].relpath).read_text()
    assert "| routed experts per MoE layer | 8 |" in card and "No evaluation was run." not in card
    with db.session() as s:
        kinds_seen = {e.kind for e in s.query(JobEvent).filter_by(job_id=job_id)}
    assert {"message", "progress"} <= kinds_seen
    assert not (settings.data_dir / "work").exists() or not any((settings.data_dir / "work").iterdir())


def test_second_delivery_does_nothing(settings, db, make_job):
    job_id = make_job()
    calls: list[int] = []
    assert run_job_once(settings, job_id, body=layered_body(0, calls)) is not None
    assert run_job_once(settings, job_id, body=layered_body(0, calls)) is None
    assert len(calls) == LAYERS
    assert get_job(db, job_id).attempts == 1


def test_concurrent_deliveries_run_the_body_once(settings, db, make_job):
    job_id = make_job()
    calls: list[int] = []
    threads = [threading.Thread(target=run_job_once, args=(settings, job_id, layered_body(0.02, calls))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == list(range(1, LAYERS + 1))
    assert get_job(db, job_id).status == JobStatus.succeeded


def test_cancel_flag_stops_between_layers(settings, db, make_job):
    job_id = make_job()
    calls: list[int] = []

    def cancel_soon() -> None:
        while len(calls) < 2:
            time.sleep(0.01)
        with db.session() as s:  # what POST /v1/jobs/{id}/cancel does to a running job
            s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            s.commit()

    threading.Thread(target=cancel_soon).start()
    run_job_once(settings, job_id, body=layered_body(0.3, calls))
    job = get_job(db, job_id)
    assert job.status == JobStatus.cancelled and job.error_code is None
    assert 2 <= len(calls) < LAYERS
    assert [a.kind for a in artifacts_of(db, job_id)] == ["log"]


def test_cancel_requested_while_queued_never_runs(settings, db, make_job):
    job_id = make_job(cancel_requested=True)
    calls: list[int] = []
    assert run_job_once(settings, job_id, body=layered_body(0, calls)) is None
    assert calls == [] and get_job(db, job_id).status == JobStatus.cancelled


def test_time_limit_fails_with_timeout(settings, db, make_job):
    settings.job_time_limit_s = 1
    job_id = make_job()
    calls: list[int] = []
    run_job_once(settings, job_id, body=layered_body(0.3, calls))
    job = get_job(db, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "timeout")
    assert len(calls) < LAYERS


def test_missing_local_model_fails_with_model_not_found(settings, db, make_job, tmp_path):
    job_id = make_job(model_source={"kind": "local", "path": str(tmp_path / "nowhere")})
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "model_not_found")
    assert "nowhere" in job.error_message


def test_a_local_model_that_asks_for_remote_code_after_submission_is_refused(settings, db, make_job, tmp_path):
    """The API refuses auto_map at submit; a folder changed afterwards is refused when the job starts, and the
    module it names is never imported."""
    folder = tmp_path / "model"
    shutil.copytree(settings.allowed_model_roots[0] / "tiny-mixtral", folder)
    marker = tmp_path / "imported"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    job_id = make_job(model_source={"kind": "local", "path": str(folder)})
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "invalid_model")
    assert "config.json asks for remote code" in job.error_message
    assert not marker.exists()


def test_unreadable_recipe_fails_with_invalid_recipe(settings, db, make_job):
    job_id = make_job(recipe={"stages": [{"method": "no_such_method"}]})
    run_job_once(settings, job_id)
    assert get_job(db, job_id).error_code == "invalid_recipe"


def test_lost_lease_stops_without_writing(settings, db, make_job):
    job_id = make_job()
    calls: list[int] = []

    def steal_after_two_layers() -> None:
        while len(calls) < 2:
            time.sleep(0.01)
        with db.session() as s:  # the reaper re-queued the job and another worker claimed attempt 2
            s.execute(update(Job).where(Job.id == job_id).values(worker="other", attempts=2))
            s.commit()

    threading.Thread(target=steal_after_two_layers).start()
    run_job_once(settings, job_id, body=layered_body(0.3, calls))
    job = get_job(db, job_id)
    assert (job.status, job.worker) == (JobStatus.running, "other")  # left to the attempt that owns it
    assert artifacts_of(db, job_id) == []
    assert len(calls) < LAYERS
