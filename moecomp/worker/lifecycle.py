"""One delivery of ``moecomp.run_job``: claim, run, write artifacts, finish. Idempotent by the claim.

A second delivery of the same message (broker re-delivery, reaper re-queue, duplicate enqueue)
finds the job final, or running under a live lease, and does nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from moecomp.compression.context import Cancelled
from moecomp.persistence import jobs
from moecomp.persistence.database import Database
from moecomp.persistence.jobs import Lease
from moecomp.persistence.models import Job, JobStatus, Upload, utcnow
from moecomp.settings import Settings
from moecomp.worker.db_retry import retrying
from moecomp.worker.errors import JobError, LeaseLost, classify
from moecomp.worker.heartbeat import heartbeating
from moecomp.worker.presence import NODE_ENV, host_name
from moecomp.worker.reporter import JobReporter
from moecomp.worker.runner import JobInput, JobOutput, parse_input, run_body
from moecomp.worker.stores import Store, store_for

log = logging.getLogger(__name__)
Body = Callable[[JobInput, Path, JobReporter, str, Path], JobOutput]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pick_device(setting: str) -> str:
    """``auto``: this pool process's own GPU (child i of the prefork pool takes GPU i), else the CPU."""
    if setting != "auto":
        return setting
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    from billiard.process import current_process

    index = getattr(current_process(), "index", None) or 0
    return f"cuda:{index % torch.cuda.device_count()}"


def run_job_once(settings: Settings, job_id: str, body: Body = run_body) -> Lease | None:
    """Run the job if this delivery wins the claim; returns the lease it ran under (None: nothing to do)."""
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as s:
            job = s.get(Job, job_id)
            if job is None or JobStatus(job.status).final:
                log.info("job %s is %s: nothing to do", job_id, job.status if job else "unknown")
                return None
            if job.status == JobStatus.queued and job.cancel_requested:
                jobs.fail_unclaimed(s, job_id, JobStatus.queued, "cancelled", "cancelled before it started")
                return None
            host, node = host_name(settings), os.environ.get(NODE_ENV)
            lease = jobs.claim(s, job_id, worker_name(), settings.stale_after_s, settings.max_attempts, host, node)
        if lease is None:
            log.info("job %s is %s on %s: this delivery does nothing", job_id, job.status, job.worker)
            return None
        _run_claimed(settings, db, lease, body)
        return lease
    finally:
        db.engine.dispose()


def _deadline(settings: Settings, job: Job) -> float:
    elapsed = (utcnow() - job.started_at).total_seconds() if job.started_at else 0.0
    return time.monotonic() + settings.job_time_limit_s - elapsed


def work_dir(settings: Settings, lease: Lease) -> Path:
    return settings.data_dir / "work" / f"{lease.job_id}-{lease.attempt}"


def _prepare(settings: Settings, db: Database, lease: Lease) -> tuple[Job, Upload | None]:
    job, upload = retrying(lambda: _read_request(db, lease))
    # A killed attempt never removed its working folder (the checkpoint being built, scratch): this one does.
    for earlier in range(1, lease.attempt):
        shutil.rmtree(work_dir(settings, Lease(lease.job_id, lease.worker, earlier)), ignore_errors=True)
    return job, upload


def _read_request(db: Database, lease: Lease) -> tuple[Job, Upload | None]:
    """Forget an earlier attempt's artifact rows (the caller removes the files) and read the job's request."""
    with db.session() as s:
        jobs.clear_artifacts(s, lease)
        job = s.get(Job, lease.job_id)
        assert job is not None
        upload_id = job.model_source.get("upload_id")
        upload = s.get(Upload, upload_id) if job.model_source.get("kind") == "upload" else None
    return job, upload


@dataclass
class Attempt:
    """One claimed attempt of one job: everything its steps share."""

    settings: Settings
    db: Database
    lease: Lease
    reporter: JobReporter
    workdir: Path
    store: Store  # where the job's input and artifacts live: the shared data folder or the API (stores.py)


def _run_claimed(settings: Settings, db: Database, lease: Lease, body: Body) -> None:
    job, upload = _prepare(settings, db, lease)
    reporter = JobReporter(db, lease, _deadline(settings, job))
    store = store_for(settings, db, lease, reporter)
    with closing(store):
        run = Attempt(settings, db, lease, reporter, work_dir(settings, lease), store)
        try:
            with heartbeating(db, lease, settings.heartbeat_s, on_lost=lambda: setattr(reporter, "lost", True)):
                status, code, message = _attempt(run, job, upload, body)
        finally:
            shutil.rmtree(run.workdir, ignore_errors=True)
        if reporter.lost:
            log.warning("job %s attempt %d lost its lease; the newer attempt decides", lease.job_id, lease.attempt)
            return
        _finish(run, status, code, message)


def _attempt(run: Attempt, job: Job, upload: Upload | None, body: Body) -> tuple[JobStatus, str | None, str | None]:
    """Run the body and write artifacts; returns (status, error_code, error_message). Never raises."""
    reporter = run.reporter
    try:
        device = pick_device(run.settings.device)
        reporter.message("worker", f"attempt {run.lease.attempt} on {run.lease.worker}, device {device}")
        reporter.context().check_cancelled()
        run.store.prepare()  # the files of earlier attempts go
        folder = run.store.upload_folder(upload) if upload is not None else None
        inp = parse_input(job, upload, run.settings, folder)
        out = body(inp, run.workdir, reporter, device, run.settings.data_dir / "cache")
        reporter.begin_phase(0.9, 1.0, 1)
        run.store.write(out)
        if out.evaluation_error:
            kept = "The checkpoint and its manifest are kept: download them and run `moecomp evaluate` on them."
            return JobStatus.failed, "evaluation_failed", f"{out.evaluation_error.rstrip('.')}. {kept}"
        if out.gate_failures:
            return JobStatus.failed, "quality_gate", "; ".join(out.gate_failures)
        return JobStatus.succeeded, None, None
    except Cancelled:
        code, message = classify(reporter.stop_reason() or Cancelled())
    except LeaseLost:
        reporter.lost = True
        code, message = "worker_lost", "another attempt owns the job"
    except Exception as exc:  # every failure ends the job with a code; the traceback goes to the log
        code, message = classify(exc, run.workdir)
        reporter.log.append(traceback.format_exc())
        log.exception("job %s failed", run.lease.job_id)
    if code == "disk_full" and not reporter.lost:
        _drop_outputs(run)
    if code == "cancelled":
        return JobStatus.cancelled, None, message
    return JobStatus.failed, code, message


def _drop_outputs(run: Attempt) -> None:
    """Forget the attempt's artifacts: an incomplete set is of no use, and disk space is what is missing."""
    with run.db.session() as s:
        jobs.clear_artifacts(s, run.lease)
    run.store.drop()


def _end(run: Attempt, status: JobStatus, code: str | None, message: str | None) -> bool:
    with run.db.session() as s:
        return jobs.finish(s, run.lease, status, code, message)


def _finish(run: Attempt, status: JobStatus, code: str | None, message: str | None) -> None:
    level = "info" if status == JobStatus.succeeded else "error"
    text = f"job {status.value}" + (f": {code}: {message}" if code else "")
    run.reporter.message("worker", text, level=level)
    try:
        run.store.write_log("\n".join(run.reporter.log).encode())
    except LeaseLost:
        return
    except (OSError, JobError):  # no room for the log, or the API unreachable: the job still ends, with its events
        log.exception("job %s: the log artifact could not be written", run.lease.job_id)
    retrying(lambda: _end(run, status, code, message))
    try:
        run.store.after_end()  # a zombie of an older attempt may have written files after this attempt began
    except JobError:  # the API unreachable: the next attempt's or a retention sweep's business
        log.exception("job %s: the files of older attempts could not be removed", run.lease.job_id)
