"""Readiness: can we reach the database and the broker right now (each check bounded in time)."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import text

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
