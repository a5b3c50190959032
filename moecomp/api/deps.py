"""Typed dependency aliases: the settings, a database session per request, the caller's team."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from celery import Celery
from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from moecomp.api.errors import Forbidden, Unauthorized
from moecomp.persistence.database import Database
from moecomp.persistence.keys import team_for_key
from moecomp.persistence.models import ServiceKey, Team
from moecomp.persistence.service_keys import Role, service_key
from moecomp.settings import Settings

COOKIE_NAME = "moecomp_key"

_bearer = HTTPBearer(auto_error=False, description="An API key: mc_<prefix8>_<secret>")
_cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False, description="Set by POST /dashboard/login")


# async: these only read app state, and FastAPI would send a plain def to the thread pool and back.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    return request.app.state.db


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


READ_METHODS = frozenset({"GET", "HEAD"})


def read_sessions(db: Database) -> sessionmaker[Session]:
    """Sessions for GET and HEAD, which only read: each statement commits by itself (AUTOCOMMIT).

    A poll saves the BEGIN and ROLLBACK round trips: measured in-process on PostgreSQL for a poll's two
    queries, 1.33 -> 1.07 ms of API CPU and 0.56 -> 0.21 ms of PostgreSQL CPU. Reads see the same committed
    rows as before (READ COMMITTED takes a snapshot per statement anyway). Same pool, same connections.
    """
    return sessionmaker(db.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request, for at most ``db.capacity`` requests at once (the others wait here).

    Deadlock guard: FastAPI runs sync handlers, sync dependencies and the response validation of sync
    handlers on one pool of 40 threads. Were more requests holding sessions than the connection pool
    has connections, every thread could end up waiting for a connection while every connection waits,
    held by its session, for a thread. Admitting only as many sessions as there are connections means
    a thread never waits for a connection; waiting requests wait here, holding neither. The session
    closes right after the handler (scope="function"; before a streamed body), on a limiter of its own
    (never behind the requests waiting for the shared one), shielded so a disconnect cannot skip it.
    """
    state = request.app.state
    if getattr(state, "session_slots", None) is None:  # made in the event loop that uses them
        state.session_slots = anyio.Semaphore(state.db.capacity)
        state.close_limiter = anyio.CapacityLimiter(8)
        state.read_sessions = read_sessions(state.db)
    async with state.session_slots:
        session = state.read_sessions() if request.method in READ_METHODS else state.db.sessions()
        try:
            yield session
        finally:
            # On a thread: closing rolls back, a database round trip that must not stall the event loop.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=state.close_limiter)


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def presented_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> str | None:
    """The key the caller presents: the Bearer header's, else the dashboard cookie's (not checked here)."""
    return bearer.credentials if bearer is not None else cookie


KeyDep = Annotated[str | None, Depends(presented_key)]


WRONG_KIND = {
    Role.worker: "a worker credential cannot call the team API; use a team API key (moecomp admin create-key)",
    Role.admin: "an admin key cannot call the team API; use a team API key (moecomp admin create-key)",
}


def get_team(session: SessionDep, key: KeyDep) -> Team:
    """The team of the Bearer key, else of the dashboard cookie; 401 (WWW-Authenticate: Bearer) otherwise,
    403 for a valid key of another kind (a worker credential, an admin key)."""
    team = team_for_key(session, key) if key else None
    if team is None:
        other = service_key(session, key) if key else None
        if other is not None:
            raise Forbidden(WRONG_KIND[Role(other.role)])
        raise Unauthorized()
    return team


TeamDep = Annotated[Team, Depends(get_team)]


def _service_key(session: Session, bearer: HTTPAuthorizationCredentials | None, role: Role) -> ServiceKey:
    """The live ``role`` key of the Bearer header (never the cookie: no browser holds one); 401, or 403 for a
    valid key of another kind."""
    key = bearer.credentials if bearer is not None else None
    found = service_key(session, key) if key else None
    if found is not None and found.role == role:
        return found
    held = HELD[found.role] if found is not None else HELD["team"] if key and team_for_key(session, key) else None
    if held is not None:
        raise Forbidden(f"{held} cannot call this route; it needs {NEEDS[role]}")
    raise Unauthorized(f"missing or invalid key: this route needs {NEEDS[role]}")


HELD = {"team": "a team API key", Role.worker: "a worker credential", Role.admin: "an admin key"}
NEEDS = {
    Role.worker: "a worker credential (moecomp admin create-worker-key)",
    Role.admin: "an admin key (moecomp admin create-admin-key)",
}


def get_worker_key(
    session: SessionDep, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ServiceKey:
    return _service_key(session, bearer, Role.worker)


WorkerKeyDep = Annotated[ServiceKey, Depends(get_worker_key)]


def get_fleet_viewer(session: SessionDep, key: KeyDep) -> Team | None:
    """Who asks for the worker registry: a team (team key, Bearer or dashboard cookie: it sees its own jobs on
    the workers), or None for an admin key (it sees every job). A worker credential gets 403; others 401."""
    team = team_for_key(session, key) if key else None
    if team is not None:
        return team
    other = service_key(session, key) if key else None
    if other is not None and other.role == Role.admin:
        return None
    if other is not None:
        raise Forbidden(WRONG_KIND[Role.worker])
    raise Unauthorized()


FleetViewerDep = Annotated[Team | None, Depends(get_fleet_viewer)]
