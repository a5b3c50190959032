"""The thin, idempotent Celery task: a job id in, everything else read from the database."""

from __future__ import annotations

from celery import Celery

from moecomp.settings import Settings

# Past the job's own time limit (checked between layers), the pool kills a hung process; the reaper
# then fails the job with `timeout`.
HARD_LIMIT_GRACE_S = 300


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register ``moecomp.run_job`` on ``app``; the task body runs with these settings."""

    @app.task(name="moecomp.run_job", ignore_result=True, time_limit=settings.job_time_limit_s + HARD_LIMIT_GRACE_S)
    def run_job(job_id: str) -> None:
        from moecomp.worker.lifecycle import run_job_once  # noqa: PLC0415  (torch loads in the worker only)

        run_job_once(settings, job_id)
