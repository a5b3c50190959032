"""Typed dependency aliases: the settings, a database session per request, the caller's team."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from moecomp.api.errors import Unauthorized
from moecomp.persistence.database import Database
from moecomp.persistence.keys import team_for_key
from moecomp.persistence.models import Team
from moecomp.settings import Settings

COOKIE_NAME = "moecomp_key"

_bearer = HTTPBearer(auto_error=False, description="An API key: mc_<prefix8>_<secret>")
_cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False, description="Set by POST /dashboard/login")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.db


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_session(db: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    with db.session() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_team(
    session: SessionDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> Team:
    """The team of the Bearer key, else of the dashboard cookie; 401 (WWW-Authenticate: Bearer) otherwise."""
    key = bearer.credentials if bearer is not None else cookie
    team = team_for_key(session, key) if key else None
    if team is None:
        raise Unauthorized()
    return team


TeamDep = Annotated[Team, Depends(get_team)]
