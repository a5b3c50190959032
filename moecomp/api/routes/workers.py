"""/v1/workers: the worker registry: hosts, GPUs, versions, current jobs. An admin key sees every job on them, a
team key (the dashboard's cookie too) only its own (another team's running job counts, unnamed)."""

from __future__ import annotations

from fastapi import APIRouter

from moecomp.api.deps import FleetViewerDep, SessionDep, SettingsDep
from moecomp.api.responses import refusals
from moecomp.api.schemas import WorkersPublic
from moecomp.api.services.workers import list_workers

router = APIRouter(prefix="/workers", tags=["workers"], responses=refusals(401, 403))


@router.get("", response_model=WorkersPublic)
def get_workers(session: SessionDep, settings: SettingsDep, viewer: FleetViewerDep) -> WorkersPublic:
    return list_workers(session, settings.stale_after_s, viewer)
