"""The thin, idempotent Celery task: a job id in, everything else read from the database."""

from __future__ import annotations

from celery import Celery

from moecomp.settings import Settings


def hard_time_limit(settings: Settings) -> float:
    """Past the job's own time limit (checked between layers), the pool kills a process stuck inside one
    step (a layer that never ends, a hung read); the reaper then fails the job with `timeout`."""
    return settings.job_time_limit_s + settings.time_limit_grace_s


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register ``moecomp.run_job`` on ``app``; the task body runs with these settings."""

    @app.task(name="moecomp.run_job", ignore_result=True, time_limit=hard_time_limit(settings))
    def run_job(job_id: str) -> None:
        from moecomp.worker.lifecycle import run_job_once  # torch loads in the worker only

        run_job_once(settings, job_id)
