"""Engine and session factory built from the settings; no module-level state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_POOL = 40
PG_POOL, PG_OVERFLOW = 10, 20
# A database that is down refuses at once; one that cannot be reached (a dead host) must not hold a request
# or a readiness probe for the TCP timeout of minutes.
PG_CONNECT_TIMEOUT_S = 5


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # SQLite connections are cheap: as many as the API's thread pool (40) can use at once.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=SQLITE_POOL, max_overflow=0
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while the worker writes; foreign keys are off by default in SQLite.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # pool_pre_ping: after a database restart, pooled connections are dead; each is tested on checkout and
    # replaced, so the service recovers by itself.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=PG_POOL,
        max_overflow=PG_OVERFLOW,
        connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
    )


def is_transient(exc: BaseException) -> bool:
    """A lost, refused or busy connection (worth a retry), as opposed to a statement the database refused."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Database:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # The most connections the pool hands out at once (the API admits that many requests to the database).
        self.capacity = SQLITE_POOL if url.startswith("sqlite") else PG_POOL + PG_OVERFLOW

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s:
            yield s


def changed_rows(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE; how many rows it changed (0 where it matched none)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount or 0
