"""Queue latency and per-job overhead of the worker, on the embedded SQLite broker or on Redis.

Starts one `moecomp worker` process, stores N jobs whose model folder does not exist (each fails
at once with model_not_found, so the figures are the service's own cost, not compression), enqueues
them as the API does, and reports claim latency (created -> started) and handling time
(started -> finished) percentiles.

    .venv/bin/python benchmarks/worker_latency.py                      # SQLite + SQLite broker
    .venv/bin/python benchmarks/worker_latency.py --redis redis://127.0.0.1:6379/9 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench   # an existing, empty database
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moecomp.persistence.database import Database
from moecomp.persistence.migrate import upgrade
from moecomp.persistence.models import Job, JobStatus, Team
from moecomp.settings import Settings
from moecomp.worker.app import make_celery
from moecomp.worker.queue import enqueue_job


def store_jobs(db: Database, n: int) -> list[str]:
    with db.session() as s:
        team = Team(name=f"bench-{time.time_ns()}")
        s.add(team)
        s.flush()
        rows = [
            Job(team_id=team.id, model_source={"kind": "local", "path": "/nonexistent"}, recipe={}, evaluation={})
            for _ in range(n)
        ]
        s.add_all(rows)
        s.commit()
        return [r.id for r in rows]


def wait_final(db: Database, ids: list[str], timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as s:
            rows = s.query(Job).filter(Job.id.in_(ids)).all()
        if all(JobStatus(r.status).final for r in rows):
            return rows
        time.sleep(0.2)
    raise SystemExit("jobs did not finish in time")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--redis", default="", help="broker URL; default: the embedded SQLite broker")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="moecomp-bench-"))
    env = {**os.environ, "MOECOMP_DATA_DIR": str(data), "MOECOMP_BROKER_URL": args.redis}
    env["MOECOMP_DATABASE_URL"] = args.database_url
    settings = Settings(data_dir=data, broker_url=args.redis, database_url=args.database_url)
    upgrade(settings.resolved_database_url)
    worker = subprocess.Popen([sys.executable, "-m", "moecomp.cli.main", "worker", "-l", "WARNING"], env=env)
    try:
        db, app = Database(settings.resolved_database_url), make_celery(settings)
        warmup = store_jobs(db, 1)  # the worker preloads torch and the library before it consumes
        enqueue_job(app, warmup[0])
        wait_final(db, warmup, timeout=180)
        ids = store_jobs(db, args.n)
        for job_id in ids:
            enqueue_job(app, job_id)
        rows = wait_final(db, ids, timeout=60 + args.n * 5)
    finally:
        worker.terminate()
        worker.wait(30)
    claim = [(r.started_at - r.created_at).total_seconds() for r in rows if r.started_at]
    handle = [(r.finished_at - r.started_at).total_seconds() for r in rows if r.started_at and r.finished_at]
    codes = {r.error_code for r in rows}
    broker = args.redis or "sqlite broker"
    print(f"{broker}, {args.n} jobs, codes {codes}")
    print(f"handling per job: p50 {pct(handle, 50) * 1000:.0f} ms, p99 {pct(handle, 99) * 1000:.0f} ms")
    print(f"claim latency (stored -> running): p50 {pct(claim, 50) * 1000:.0f} ms, first {min(claim) * 1000:.0f} ms")
    print(f"all {args.n} done {max(r.finished_at for r in rows) - min(r.created_at for r in rows)}")


if __name__ == "__main__":
    main()
