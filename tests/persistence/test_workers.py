"""Worker presence rows: a beat makes a worker count as alive, silence or forgetting makes it stop counting."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from moecomp.persistence import workers
from moecomp.persistence.database import Database
from moecomp.persistence.migrate import upgrade
from moecomp.persistence.models import Worker, utcnow


def _age(db: Database, name: str, seconds: float) -> None:
    with db.session() as s:
        s.execute(update(Worker).where(Worker.name == name).values(beat_at=utcnow() - timedelta(seconds=seconds)))
        s.commit()


def test_beats_count_until_silent_or_forgotten(database_url: str) -> None:
    upgrade(database_url)
    db = Database(database_url)
    try:
        with db.session() as s:
            assert workers.count_alive(s, 30) == 0
            workers.beat(s, "a:1")
            workers.beat(s, "a:1")  # a second beat renews the same row
            workers.beat(s, "b:2")
            assert workers.count_alive(s, 30) == 2
        _age(db, "b:2", 31)
        with db.session() as s:
            assert workers.count_alive(s, 30) == 1
            workers.forget(s, "a:1")
            assert workers.count_alive(s, 30) == 0
        _age(db, "b:2", workers.FORGET_AFTER.total_seconds() + 1)
        with db.session() as s:
            workers.beat(s, "c:3")  # a beat also deletes rows silent for a day
            assert [w.name for w in s.query(Worker)] == ["c:3"]
    finally:
        db.engine.dispose()
