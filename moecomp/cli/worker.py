"""``moecomp worker``: a Celery worker (prefork pool, one job per process, one process per GPU) + the reaper."""

from __future__ import annotations

import argparse
import os
import sys

from moecomp.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("worker", help="run a worker that executes compression jobs")
    p.add_argument(
        "-c", "--concurrency", type=int, default=None, help="jobs at once (default: the number of GPUs, or 1)"
    )
    p.add_argument("-Q", "--queues", default=None, help="comma-separated queues to consume (default: moecomp)")
    p.add_argument("-n", "--hostname", default=None, help="worker name (Celery's -n)")
    p.add_argument("-l", "--loglevel", default="INFO")
    p.set_defaults(func=run)


def default_concurrency() -> int:
    """One job per GPU: each prefork process takes the GPU of its index (lifecycle.pick_device)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip()]))
    import torch  # device_count asks NVML; it does not create a CUDA context before the fork

    return max(1, torch.cuda.device_count())


def celery_argv(args: argparse.Namespace, queue: str) -> list[str]:
    argv = [
        "worker",
        "--pool=prefork",  # not solo: only a pool can kill a job's process at the hard time limit
        f"--concurrency={args.concurrency or default_concurrency()}",
        f"--queues={args.queues or queue}",
        f"--loglevel={args.loglevel}",
        "--prefetch-multiplier=1",
        "--without-gossip",
        "--without-mingle",
    ]
    return argv + ([f"--hostname={args.hostname}"] if args.hostname else [])


def _api_refusal(settings: Settings) -> str | None:
    """A worker on another host: why the API refuses its credential, if it does (remote.ApiClient.refusal)."""
    from moecomp.worker.remote import ApiClient

    client = ApiClient(settings)
    try:
        return client.refusal()
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    from moecomp.worker.app import make_celery
    from moecomp.worker.presence import NODE_ENV, Presence
    from moecomp.worker.reaper import start_reaper

    # CUDA must not be initialised in the main process before the pool forks (a forked child could not
    # use it): torch then answers is_available()/device_count() through NVML, without touching CUDA.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    settings = Settings()
    if settings.api_url and (refused := _api_refusal(settings)):
        print(f"moecomp worker: {refused}", file=sys.stderr)
        return 2
    if not settings.database_url:  # embedded: the worker may start before `serve` created the database
        from moecomp.cli.admin import migrate_database

        migrate_database(settings)
    app = make_celery(settings)
    # Import torch, transformers and the library once, before the pool forks, so that each job
    # starts at once instead of spending seconds on imports in its pool process.
    import moecomp.worker.lifecycle  # noqa: F401

    start_reaper(settings, app)
    presence = Presence(settings)  # /readyz and /metrics count this worker while it beats
    os.environ[NODE_ENV] = presence.name  # the pool processes forked from here record it on their jobs
    presence.start_when_ready()
    try:
        app.worker_main(celery_argv(args, app.conf.task_default_queue))
    finally:
        presence.stop()
    return 0
