"""reap_once: stale jobs go back on the real broker queue; the embedded broker is kept small."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from moecomp.persistence import jobs
from moecomp.persistence.models import Job, JobStatus, utcnow
from moecomp.worker.app import make_celery
from moecomp.worker.queue import enqueue_job
from moecomp.worker.reaper import reap_once
from tests.worker.helpers import get_job


def broker_rows(settings) -> list[tuple[int, str]]:
    path = Path(settings.resolved_broker_url.removeprefix("sqla+sqlite:///"))
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT visible, payload FROM kombu_message").fetchall()
    conn.close()
    return rows


def make_stale(db, job_id: str, **values) -> None:
    with db.session() as s:
        jobs.claim(s, job_id, "dead-worker", 30, 3)
        s.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60), **values))
        s.commit()


def test_stale_job_is_requeued_onto_the_broker(settings, db, make_job):
    job_id = make_job()
    make_stale(db, job_id)
    app = make_celery(settings)
    reaped = reap_once(settings, db, app)
    assert reaped.requeue == [job_id]
    assert get_job(db, job_id).status == JobStatus.queued
    rows = broker_rows(settings)
    assert len(rows) == 1 and job_id in rows[0][1] and rows[0][0] == 1


def test_stale_job_with_cancel_requested_ends_cancelled(settings, db, make_job):
    job_id = make_job()
    make_stale(db, job_id, cancel_requested=True)
    reaped = reap_once(settings, db, make_celery(settings))
    job = get_job(db, job_id)
    assert reaped.failed == [job_id] and (job.status, job.error_code) == (JobStatus.cancelled, None)


def test_delivered_rows_are_pruned_from_the_embedded_broker(settings, db, make_job):
    app = make_celery(settings)
    enqueue_job(app, "a")
    enqueue_job(app, "b")
    with app.connection_for_read() as conn:  # a consumer takes one message, as a worker would
        conn.default_channel.basic_get("moecomp", no_ack=True)
    assert sorted(v for v, _ in broker_rows(settings)) == [0, 1]
    reap_once(settings, db, app)
    assert [v for v, _ in broker_rows(settings)] == [1]  # the waiting message stays
