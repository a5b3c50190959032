"""The FastAPI application factory: settings, database, Celery (for enqueueing), routes, error shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from moecomp import __version__
from moecomp.api import dashboard
from moecomp.api.body_limit import BodyLimit
from moecomp.api.errors import install_error_handlers
from moecomp.api.http_metrics import HttpMetrics
from moecomp.api.routes import artifacts, health, jobs, methods, models, worker, workers
from moecomp.api.services.metrics import make_registry
from moecomp.persistence.database import Database
from moecomp.settings import Settings
from moecomp.worker.app import make_celery


def _v1() -> APIRouter:
    v1 = APIRouter(prefix="/v1")
    for module in (jobs, artifacts, models, methods, worker, workers):
        v1.include_router(module.router)
    return v1


def create_app(settings: Settings | None = None, *, require_worker: bool = False) -> FastAPI:
    """Build the app; the database schema must already be migrated (moecomp.persistence.migrate.upgrade).

    ``require_worker``: /readyz is 503 while no worker is alive (``serve`` with the worker it supervises).
    """
    settings = settings or Settings()
    for folder in (settings.data_dir, settings.artifacts_dir, settings.uploads_dir):
        folder.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        db.engine.dispose()

    app = FastAPI(title="moecomp", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.session_slots = None  # see deps.get_session
    app.state.celery = make_celery(settings)
    app.state.require_worker = require_worker
    app.state.metrics = make_registry(db, settings.stale_after_s)
    # Uploads and workers' artifact chunks stream to disk under their own limits.
    app.add_middleware(BodyLimit, exempt=("/v1/models",), exempt_under="/v1/worker/jobs/")
    app.add_middleware(HttpMetrics, registry=app.state.metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(_v1())
    app.include_router(dashboard.router)
    return app
