"""Probes and metrics, outside /v1: /healthz (alive), /readyz (database and broker), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from moecomp.api.deps import CeleryDep, DatabaseDep
from moecomp.api.schemas import HealthPublic, ReadyPublic
from moecomp.api.services.health import broker_ok, database_ok

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    return HealthPublic()


@router.get("/readyz", response_model=ReadyPublic, responses={503: {"model": ReadyPublic}})
def readyz(db: DatabaseDep, celery_app: CeleryDep) -> JSONResponse:
    ready = ReadyPublic(database=database_ok(db), broker=broker_ok(celery_app))
    return JSONResponse(ready.model_dump(), status_code=200 if ready.database and ready.broker else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
