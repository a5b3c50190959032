"""Prometheus metrics computed from the database at scrape time, so every API replica reports the same.

moecomp_jobs{status}            jobs by status
moecomp_queue_depth             queued jobs
moecomp_job_duration_seconds    histogram of finished_at - started_at over finished jobs
moecomp_workers_alive           workers whose heartbeat is younger than stale_after_s
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.sql.elements import ColumnElement

from moecomp.persistence import workers
from moecomp.persistence.database import Database
from moecomp.persistence.models import Job, JobStatus

BUCKETS_S = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800)


def _duration_s(dialect: str) -> ColumnElement[float]:
    if dialect == "sqlite":
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return cast(func.extract("epoch", Job.finished_at - Job.started_at), Float)


class JobsCollector(Collector):
    def __init__(self, db: Database, stale_after_s: float) -> None:
        self.db, self.stale_after_s = db, stale_after_s

    def _counts(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        counts = {status.value: 0 for status in JobStatus}
        counts.update({status: n for status, n in rows})
        return counts

    def _durations(self) -> tuple[list[int], float, int]:
        d = _duration_s(self.db.engine.dialect.name)
        columns = [func.coalesce(func.sum(case((d <= b, 1), else_=0)), 0) for b in BUCKETS_S]
        query = select(*columns, func.coalesce(func.sum(d), 0.0), func.count()).where(
            Job.started_at.is_not(None), Job.finished_at.is_not(None)
        )
        with self.db.session() as session:
            row = session.execute(query).one()
        return [int(x) for x in row[: len(BUCKETS_S)]], float(row[-2]), int(row[-1])

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        counts = self._counts()
        jobs = GaugeMetricFamily("moecomp_jobs", "Jobs by status.", labels=["status"])
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("moecomp_queue_depth", "Jobs waiting for a worker.", value=counts["queued"])
        cumulative, total_s, n = self._durations()
        buckets = [(str(float(b)), c) for b, c in zip(BUCKETS_S, cumulative, strict=True)] + [("+Inf", n)]
        yield HistogramMetricFamily(
            "moecomp_job_duration_seconds", "Run time of finished jobs.", buckets=buckets, sum_value=total_s
        )
        with self.db.session() as session:
            alive = workers.count_alive(session, self.stale_after_s)
        yield GaugeMetricFamily("moecomp_workers_alive", "Workers with a recent heartbeat.", value=alive)


def make_registry(db: Database, stale_after_s: float) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(db, stale_after_s))
    return registry
