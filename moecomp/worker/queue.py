"""Enqueue a job; called by the API after the commit that stored it, and by the reaper."""

from __future__ import annotations

from celery import Celery

from moecomp.worker.app import RUN_JOB


def enqueue_job(celery_app: Celery, job_id: str, queue: str | None = None) -> None:
    """Send ``moecomp.run_job(job_id)``. Safe to repeat: the worker's atomic claim drops duplicates."""
    celery_app.send_task(RUN_JOB, args=[job_id], queue=queue or celery_app.conf.task_default_queue)
