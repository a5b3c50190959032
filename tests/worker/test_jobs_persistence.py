"""claim / heartbeat / finish / reap_stale against the real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from moecomp.persistence import jobs
from moecomp.persistence.models import Artifact, Job, JobEvent, JobStatus, utcnow
from moecomp.worker.db_retry import retrying
from moecomp.worker.reporter import JobReporter
from tests.worker.helpers import get_job


def test_second_claim_gets_nothing(db, make_job):
    job_id = make_job()
    with db.session() as s:
        first = jobs.claim(s, job_id, "w1", stale_after_s=30, max_attempts=3)
        second = jobs.claim(s, job_id, "w2", stale_after_s=30, max_attempts=3)
    assert first == jobs.Lease(job_id, "w1", 1)
    assert second is None
    job = get_job(db, job_id)
    assert (job.status, job.worker, job.attempts) == (JobStatus.running, "w1", 1)


def test_stale_running_job_can_be_claimed_and_fences_the_old_lease(db, make_job):
    job_id = make_job()
    with db.session() as s:
        old = jobs.claim(s, job_id, "w1", stale_after_s=30, max_attempts=3)
        s.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        s.commit()
        new = jobs.claim(s, job_id, "w2", stale_after_s=30, max_attempts=3)
        assert new is not None and new.attempt == 2
        assert not jobs.heartbeat(s, old)
        assert jobs.record_artifact(s, old, kind="log", name="x", relpath="x", size=1, sha256="0" * 64) is None
        assert not jobs.finish(s, old, JobStatus.succeeded)
        assert jobs.heartbeat(s, new)
        assert jobs.finish(s, new, JobStatus.succeeded)
    assert get_job(db, job_id).status == JobStatus.succeeded


def test_events_are_numbered_from_one(db, make_job):
    job_id = make_job()
    with db.session() as s:
        seqs = [jobs.append_event(s, job_id, "message", "worker", {"text": str(i)}) for i in range(3)]
        rows = s.query(JobEvent).filter_by(job_id=job_id).order_by(JobEvent.seq).all()
    assert seqs == [1, 2, 3]
    assert [r.data["text"] for r in rows] == ["0", "1", "2"]


def test_reaper_requeues_then_fails_with_worker_lost(db, make_job):
    job_id = make_job()
    later = utcnow() + timedelta(seconds=60)
    kw = dict(stale_after_s=30, max_attempts=2, time_limit_s=3600, undelivered_after_s=300)
    with db.session() as s:
        jobs.claim(s, job_id, "w1", 30, 2)
        assert jobs.reap_stale(s, now=later, **kw) == jobs.Reaped([job_id], [])
    job = get_job(db, job_id)
    assert (job.status, job.worker, job.attempts) == (JobStatus.queued, None, 1)
    with db.session() as s:
        jobs.claim(s, job_id, "w2", 30, 2)
        assert jobs.reap_stale(s, now=utcnow() + timedelta(seconds=60), **kw) == jobs.Reaped([], [job_id])
    job = get_job(db, job_id)
    assert (job.status, job.error_code, job.attempts) == (JobStatus.failed, "worker_lost", 2)
    assert job.finished_at is not None


def test_reaper_fails_a_stale_job_past_its_time_limit_with_timeout(db, make_job):
    job_id = make_job()
    kw = dict(stale_after_s=30, max_attempts=3, time_limit_s=10, undelivered_after_s=300)
    with db.session() as s:
        jobs.claim(s, job_id, "w1", 30, 3)
        assert jobs.reap_stale(s, now=utcnow() + timedelta(seconds=60), **kw).failed == [job_id]
    assert get_job(db, job_id).error_code == "timeout"


def test_reaper_resends_queued_jobs_never_delivered_once_per_period(db, make_job):
    old = make_job(created_at=utcnow() - timedelta(seconds=600))
    fresh = make_job()
    kw = dict(stale_after_s=30, max_attempts=3, time_limit_s=3600, undelivered_after_s=300)
    with db.session() as s:
        assert jobs.reap_stale(s, **kw).requeue == [old]
        assert jobs.reap_stale(s, **kw).requeue == []  # sent again just now: not again before the period
    assert get_job(db, fresh).status == JobStatus.queued


def test_writes_retried_after_a_lost_acknowledgement_land_once(db, make_job, monkeypatch):
    """The COMMIT reaches the database but the worker hears a dropped connection (a lost acknowledgement):
    the retry through the outage must find what the first try wrote, not write it again."""
    job_id = make_job()
    with db.session() as s:
        lease = jobs.claim(s, job_id, "w1", stale_after_s=30, max_attempts=3)
    commit, lost = Session.commit, []

    def commit_then_lose_the_acknowledgement(self: Session) -> None:
        commit(self)
        if not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, ConnectionResetError("connection reset by peer"))

    monkeypatch.setattr(Session, "commit", commit_then_lose_the_acknowledgement)
    JobReporter(db, lease, deadline=float("inf")).message("compress", "written once")
    assert lost
    with db.session() as s:
        texts = [e.data.get("text") for e in s.query(JobEvent).filter_by(job_id=job_id)]
    assert texts.count("written once") == 1

    lost.clear()
    record = dict(kind="log", name="job.log", relpath=f"{job_id}/1/job.log", size=3, sha256="0" * 64)

    def write() -> object:
        with db.session() as s:
            return jobs.record_artifact(s, lease, **record)

    retrying(write)
    assert lost
    with db.session() as s:
        assert s.query(Artifact).filter_by(job_id=job_id).count() == 1
