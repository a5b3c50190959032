"""``moecomp serve``: the API; in the embedded mode also the database, a local key and one worker.

Embedded mode = neither MOECOMP_DATABASE_URL nor MOECOMP_BROKER_URL is set: SQLite and the SQLite
broker under data_dir. One command then gives a working service on a laptop or a single GPU box; the
worker is supervised (a new one starts when it dies, supervisor.py) and /readyz requires it.
"""

from __future__ import annotations

import argparse
import signal
import sys

from moecomp.cli.supervisor import WorkerSupervisor
from moecomp.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the API (embedded mode: with a database, a key and a worker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-worker", action="store_true", help="embedded mode: do not start a worker beside the API")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


def is_embedded(settings: Settings) -> bool:
    return not settings.database_url and not settings.broker_url


def _prepare_embedded(settings: Settings) -> None:
    from moecomp.cli.admin import ensure_local_key, local_key_path, migrate_database

    migrate_database(settings)
    key, created = ensure_local_key(settings)
    if created:
        print(f"moecomp: created the local API key (also in {local_key_path(settings)}):\n  {key}", flush=True)
    else:
        print(f"moecomp: the local API key is in {local_key_path(settings)}", flush=True)


def _reap_on_start(settings: Settings) -> None:
    """Jobs whose worker died while the service was down are re-queued before any request; expired files go."""
    from moecomp.persistence.database import Database
    from moecomp.worker.app import make_celery
    from moecomp.worker.reaper import reap_once
    from moecomp.worker.retention import sweep_safely

    db = Database(settings.resolved_database_url)
    try:
        reap_once(settings, db, make_celery(settings))
    except Exception as exc:  # a broker still starting must not keep the API down; workers reap too
        print(f"moecomp: the start-up reaper pass failed ({exc}); workers will retry", file=sys.stderr)
    sweep_safely(settings, db)
    db.engine.dispose()


def _exit_cleanly(signum: int, _frame: object) -> None:
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in
    # place that becomes a normal exit, and the worker is stopped in order instead of orphaned.
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from moecomp.api.app import create_app

    settings = Settings()
    embedded = is_embedded(settings)
    if embedded:
        _prepare_embedded(settings)
    _reap_on_start(settings)
    from moecomp.worker.retention import start_sweeper

    start_sweeper(settings)  # hourly: with workers on other hosts, no worker sweeps this host's files
    # The worker beside the API is kept running (a new one when it dies), and readiness requires it.
    supervisor = WorkerSupervisor(settings) if embedded and not args.no_worker else None
    if supervisor is not None:
        supervisor.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    try:
        print(f"moecomp: dashboard at http://{args.host}:{args.port}/dashboard", flush=True)
        app = create_app(settings, require_worker=supervisor is not None)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0
