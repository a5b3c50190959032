"""Readiness: can we reach the database and the broker right now (each check bounded in time), and how
many workers are alive (their heartbeats, persistence/workers.py)."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import text

from moecomp.api.schemas import ReadyPublic
from moecomp.persistence import workers
from moecomp.persistence.database import Database

log = logging.getLogger(__name__)


def database_ok(db: Database) -> bool:
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        log.warning("database not reachable: %s", exc)
        return False


def broker_ok(celery_app: Celery, timeout_s: float = 2.0) -> bool:
    try:
        with celery_app.connection_for_write(connect_timeout=timeout_s) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout_s)
        return True
    except Exception as exc:
        log.warning("broker not reachable: %s", exc)
        return False


def workers_alive(db: Database, within_s: float) -> int:
    """Workers that sent a heartbeat in the last ``within_s`` seconds; 0 when the database cannot say."""
    try:
        with db.session() as s:
            return workers.count_alive(s, within_s)
    except Exception as exc:
        log.warning("could not count live workers: %s", exc)
        return 0


def readiness(db: Database, celery_app: Celery, stale_after_s: float, require_worker: bool) -> ReadyPublic:
    """Each dependency, the live workers, and in words why the service is not ready (empty: it is)."""
    database, broker = database_ok(db), broker_ok(celery_app)
    alive = workers_alive(db, stale_after_s) if database else 0
    reasons = [] if database else ["the database is not reachable"]
    reasons += [] if broker else ["the broker is not reachable"]
    if require_worker and database and not alive:
        reasons.append(f"no worker is alive: none has sent a heartbeat in the last {stale_after_s:g} s")
    return ReadyPublic(database=database, broker=broker, workers=alive, reasons=reasons)
