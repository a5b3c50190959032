"""One settings object per process, shared by the API, the worker, the CLI and Alembic.

Every field reads ``MOECOMP_<NAME>`` from the environment. Per-job choices live in the recipe,
never here. The defaults are the embedded mode: SQLite, a broker on SQLite, data under ./var.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from moecomp.assets import MODELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOECOMP_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Artifacts, uploads, the embedded database and broker.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under data_dir.")
    broker_url: str = Field("", description="Celery broker URL; empty means the SQLAlchemy transport on SQLite.")
    allowed_model_roots: list[Path] = Field(
        default_factory=lambda: [MODELS], description="Local model paths must lie under one of these folders."
    )
    upload_limit_bytes: int = Field(4 * 1024**3, description="Largest accepted model upload.")
    job_time_limit_s: int = Field(6 * 3600, description="A job running longer is stopped and failed.")
    time_limit_grace_s: float = Field(
        300.0, ge=0, description="The pool kills a job stuck inside one step this long after its time limit."
    )
    max_attempts: int = Field(3, description="Deliveries of one job before it fails with worker_lost.")
    max_active_jobs_per_team: int = Field(
        8, ge=1, description="Jobs one team may have queued or running at once; more are refused with 429."
    )
    heartbeat_s: float = Field(5.0, description="How often a running job's worker proves it is alive.")
    stale_after_s: float = Field(30.0, description="A running job silent this long is re-queued.")
    undelivered_after_s: float = Field(
        300.0, gt=0, description="A queued job no worker took for this long is sent to the broker again."
    )
    device: str = Field("auto", description="Worker device: auto, cpu, cuda or cuda:N.")
    queue: str = Field("moecomp", description="Celery queue that the API sends jobs to and workers consume.")
    retention_days: float = Field(
        30.0, ge=0, description="Artifacts of jobs ended this long ago, and unused uploads, are removed; 0 keeps them."
    )
    allow_remote_code: bool = Field(False, description="Let model loading run code shipped with input models.")
    api_url: str = Field(
        "",
        description="Workers on other hosts: the API's URL. Set, a worker fetches uploaded models from the API and "
        "sends artifacts to it over HTTP (with worker_key) instead of sharing data_dir with it.",
    )
    worker_key: SecretStr = Field(
        SecretStr(""), description="The worker credential (moecomp admin create-worker-key) used with api_url."
    )
    worker_host: str = Field("", description="The host name a worker reports and jobs record; empty: the machine's.")
    transfer_chunk_bytes: int = Field(
        32 * 1024**2, ge=1024, le=1024**3, description="Bytes per request when a worker sends an artifact to the API."
    )

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'moecomp.db').resolve()}"

    @cached_property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"
