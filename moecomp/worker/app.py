"""The Celery application, built from the settings (no module-level app).

The broker only carries work; the database is the source of truth (see tasks.py and reaper.py), so
the options here only make delivery cheap and orderly: late acks, one message prefetched per
process, and a message whose worker died is rejected back to the queue where the broker can.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from moecomp.settings import Settings
from moecomp.worker.broker import split_sqla_url

RUN_JOB = "moecomp.run_job"
DEFAULT_QUEUE = "moecomp"  # the default of settings.queue


def _transport_options(settings: Settings, sqla: bool) -> dict[str, Any]:
    if sqla:
        # Passed to create_engine: wait for SQLite's lock instead of failing while the API publishes.
        return {"connect_args": {"timeout": 30}}
    # Redis re-delivers an unacked message after visibility_timeout; a job may run up to its time limit,
    # and the atomic claim makes any re-delivery harmless, so this only has to outlast a normal job.
    return {"visibility_timeout": settings.job_time_limit_s + 600}


def make_celery(settings: Settings) -> Celery:
    """A Celery app on ``settings.resolved_broker_url`` with the ``moecomp.run_job`` task registered."""
    url, transport = split_sqla_url(settings.resolved_broker_url)
    if transport is not None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("moecomp", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport=transport,
        broker_transport_options=_transport_options(settings, transport is not None),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
        enable_utc=True,
    )
    from moecomp.worker.tasks import register_tasks  # tasks import the settings, not torch

    register_tasks(app, settings)
    return app
