"""One job per GPU: run N real compression jobs through one `moecomp worker` and show where each ran.

The worker's default concurrency is the number of visible GPUs, and pool process i takes GPU i
(lifecycle.pick_device). This runs the demo recipe (expert drop 8 -> 6 on the bundled tiny Mixtral,
with evaluation) N times and prints, per job, its device and time, then the parallelism reached
(sum of job times / wall time; ~number of GPUs when every GPU is busy).

    .venv/bin/python benchmarks/worker_gpu.py --small          # CPU: 2 jobs, concurrency 1
    .venv/bin/python benchmarks/worker_gpu.py --jobs 16        # CUDA: 2 jobs per visible GPU by default
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from moecomp.assets import DEMO_MODEL
from moecomp.persistence.database import Database
from moecomp.persistence.migrate import upgrade
from moecomp.persistence.models import Job, JobEvent, JobStatus, Team
from moecomp.settings import Settings
from moecomp.worker.app import make_celery
from moecomp.worker.queue import enqueue_job

ROOT = Path(__file__).resolve().parents[1]
DEVICE_RE = re.compile(r"device (\S+)")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def store_jobs(db: Database, n: int, small: bool) -> list[str]:
    recipe = yaml.safe_load((ROOT / "examples" / "demo-recipe.yaml").read_text())
    evaluation = yaml.safe_load((ROOT / "examples" / "demo-evaluation.yaml").read_text())
    if not small:  # on a GPU the calibration the study uses is affordable even for many jobs
        recipe["calibration"] = {"samples": 128, "seq_len": 2048}
    with db.session() as s:
        team = Team(name=f"gpu-bench-{time.time_ns()}")
        s.add(team)
        s.flush()
        source = {"kind": "local", "path": str(DEMO_MODEL)}
        rows = [Job(team_id=team.id, model_source=source, recipe=recipe, evaluation=evaluation) for _ in range(n)]
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
        time.sleep(1)
    raise SystemExit("jobs did not finish in time")


def device_of(db: Database, job_id: str) -> str:
    with db.session() as s:
        for event in s.query(JobEvent).filter_by(job_id=job_id, stage="worker", kind="message"):
            found = DEVICE_RE.search(event.data.get("text", ""))
            if found:
                return found.group(1)
    return "?"


def report(db: Database, rows: list[Job]) -> None:
    busy = 0.0
    for r in sorted(rows, key=lambda r: r.started_at):
        seconds = (r.finished_at - r.started_at).total_seconds()
        busy += seconds
        print(f"{r.id}  {device_of(db, r.id):8}  {r.status:9}  {r.error_code or '':14}  {seconds:7.1f} s")
    wall = (max(r.finished_at for r in rows) - min(r.started_at for r in rows)).total_seconds()
    print(f"{len(rows)} jobs in {wall:.1f} s wall; parallelism (sum of job times / wall) {busy / wall:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="CPU, 2 jobs")
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    gpus = 0 if args.small else gpu_count()
    n = args.jobs or (2 if args.small else 2 * max(1, gpus))
    data = Path(tempfile.mkdtemp(prefix="moecomp-gpu-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOECOMP_")}
    env.update(MOECOMP_DATA_DIR=str(data), MOECOMP_DEVICE="cpu" if args.small else "auto")
    settings = Settings(data_dir=data)
    upgrade(settings.resolved_database_url)
    worker = subprocess.Popen([sys.executable, "-m", "moecomp.cli.main", "worker", "-l", "WARNING"], env=env)
    try:
        db = Database(settings.resolved_database_url)
        ids = store_jobs(db, n, args.small)
        app = make_celery(settings)
        for job_id in ids:
            enqueue_job(app, job_id)
        rows = wait_final(db, ids, timeout=3600)
    finally:
        worker.terminate()
        worker.wait(60)
    print(f"worker concurrency: {max(1, gpus)} ({gpus} GPUs visible)")
    report(db, rows)


if __name__ == "__main__":
    main()
