"""Probes and metrics, outside /v1: /healthz (alive), /readyz (database, broker, workers), /metrics (Prometheus).

/readyz is 503 when the database or the broker is down, and, where this process supervises a worker (``serve``
in the embedded mode), when no worker is alive. Elsewhere the API is ready without workers (they are another
deployment, and an API taken out of its load balancer would not even show the queued jobs): the body's
``workers`` and the ``moecomp_workers_alive`` gauge report them.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from moecomp.api.deps import CeleryDep, DatabaseDep, SettingsDep
from moecomp.api.schemas import HealthPublic, ReadyPublic
from moecomp.api.services.health import readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz() -> HealthPublic:
    return HealthPublic()


@router.get("/readyz", response_model=ReadyPublic, responses={503: {"model": ReadyPublic}})
def readyz(request: Request, db: DatabaseDep, celery_app: CeleryDep, settings: SettingsDep) -> JSONResponse:
    ready = readiness(db, celery_app, settings.stale_after_s, request.app.state.require_worker)
    return JSONResponse(ready.model_dump(), status_code=503 if ready.reasons else 200)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
