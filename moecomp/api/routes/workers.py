"""/v1/workers: the worker registry, for administrators (an admin key): hosts, GPUs, versions, current jobs."""

from __future__ import annotations

from fastapi import APIRouter

from moecomp.api.deps import AdminKeyDep, SessionDep, SettingsDep
from moecomp.api.responses import refusals
from moecomp.api.schemas import WorkersPublic
from moecomp.api.services.workers import list_workers

router = APIRouter(prefix="/workers", tags=["workers"], responses=refusals(401, 403))


@router.get("", response_model=WorkersPublic)
def get_workers(session: SessionDep, settings: SettingsDep, _key: AdminKeyDep) -> WorkersPublic:
    return list_workers(session, settings.stale_after_s)
