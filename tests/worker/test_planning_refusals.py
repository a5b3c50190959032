"""The task body (run_job_once, real database) refuses a job whose files or layers cannot fit before any work: the
job fails with disk_full / out_of_memory and a message naming the numbers; no progress, no files. The disk is a real
small tmpfs (we run as root, here and in CI); host memory is MemAvailable monkeypatched low."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moecomp.compression import activations
from moecomp.persistence.models import JobEvent, JobStatus
from moecomp.worker.lifecycle import run_job_once
from tests.tmpfs import tmpfs
from tests.worker.helpers import get_job


@pytest.fixture
def small_data_disk(settings) -> Iterator[Path]:
    """The worker's data folder (work, cache, artifacts) on a real 4 MiB tmpfs; the tiny model's checkpoint is 17."""
    with tmpfs(settings.data_dir, "4m") as disk:
        yield disk


def events_of(db, job_id: str) -> list[tuple[str, str, dict]]:
    with db.session() as s:
        rows = s.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.id)
        return [(e.kind, e.stage, e.data) for e in rows]


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_job_whose_output_cannot_fit_the_disk_fails_at_once_with_disk_full(settings, db, make_job, small_data_disk):
    job_id = make_job()
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "disk_full"), job.error_message
    message = job.error_message
    assert f"not enough disk space: this job needs 0.019 GiB on the file system of {small_data_disk}" in message
    assert "output checkpoint 0.018 GiB (routed experts 0.012 GiB" in message and "0.004 GiB are free" in message
    assert "evaluation cache 0.001 GiB" in message  # the cache shares the data disk
    events = events_of(db, job_id)
    assert [kind for kind, _, _ in events if kind == "progress"] == []  # refused before the first pass
    assert any(stage == "plan" for _, stage, _ in events)
    assert files_under(small_data_disk) == [f"artifacts/{job_id}/1/job.log"]  # no work folder, no checkpoint


def test_a_job_whose_layers_cannot_fit_host_memory_fails_at_once_with_out_of_memory(
    settings, db, make_job, monkeypatch
):
    monkeypatch.setattr(activations, "available_host_bytes", lambda: 64 * 2**20)
    job_id = make_job(recipe={"stages": [{"method": "layer_drop", "drop": 2}]})
    run_job_once(settings, job_id)
    job = get_job(db, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "out_of_memory"), job.error_message
    message = job.error_message
    assert "not enough host memory: this job needs 0.130 GiB for its largest step" in message, message
    assert "pass 0 (trimming: layer_drop) 0.130 GiB (activations 0.125 GiB" in message
    assert "0.062 GiB are available. Lower calibration samples x seq_len" in message
    assert [kind for kind, _, _ in events_of(db, job_id) if kind == "progress"] == []
    assert not (settings.data_dir / "work").exists() or not any((settings.data_dir / "work").iterdir())
    assert files_under(settings.artifacts_dir) == [f"{job_id}/1/job.log"]
