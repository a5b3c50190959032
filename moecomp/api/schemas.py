"""Request and response shapes, by role, apart from the tables (persistence/models.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moecomp.compression.evaluation.spec import EvaluationSpec
from moecomp.compression.recipe import Recipe
from moecomp.persistence.models import JobStatus

# org/name as the Hub spells repositories; no "..", no leading dot or dash.
HUB_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
HUB_REVISION = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalSource(_Strict):
    kind: Literal["local"]
    path: str = Field(min_length=1, max_length=1000, description="A folder with config.json under an allowed root.")


class HubSource(_Strict):
    kind: Literal["hub"]
    id: str = Field(pattern=HUB_ID, description="org/name on the Hugging Face Hub.")
    revision: str = Field("main", pattern=HUB_REVISION)


class UploadSource(_Strict):
    kind: Literal["upload"]
    upload_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="The id POST /v1/models returned to this team.")


ModelSource = Annotated[LocalSource | HubSource | UploadSource, Field(discriminator="kind")]


class JobCreate(_Strict):
    model: ModelSource
    recipe: Recipe
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)


class DetailPublic(BaseModel):
    """Every refusal but validation (422): ``{"detail": "human message"}``."""

    detail: str


ERROR_CODES = (
    "What ended the job: `timeout` (ran past its time limit), `disk_full` (no space left writing its files; the "
    "message names the file and the space free), `out_of_memory`, `model_not_found`, `invalid_model` (its "
    "folder asks for remote code, which the server does not allow, or holds an unreadable config), `invalid_recipe`, "
    "`quality_gate` (the evaluation missed the gate; artifacts kept), `evaluation_failed` (the evaluation raised "
    "after the export; the checkpoint and manifest kept), `worker_lost` (its worker died too often), "
    "`api_unreachable` / `api_refused` (a worker on another host could not fetch its input from the API or send "
    "an artifact to it), `internal`."
)


class ErrorPublic(BaseModel):
    code: str = Field(description=ERROR_CODES)
    message: str = Field(description="What happened and what to do, for a person.")


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    model: dict[str, Any]
    model_ref: str = Field(description="What the `model` filter matches: the resolved path, hub id or upload:<id>.")
    recipe: dict[str, Any]
    evaluation: dict[str, Any]
    progress: float
    stage: str | None
    attempts: int
    error: ErrorPublic | None
    worker: str | None
    host: str | None = Field(None, description="The host of the worker that ran (or runs) the job's last attempt.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool


class JobsPublic(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    seq: int
    time: datetime
    level: str
    kind: str
    stage: str | None
    data: dict[str, Any]


class EventsPublic(BaseModel):
    items: list[EventPublic]
    last_seq: int = Field(description="The seq of the last item, or `after` when there is none: pass it as `after`.")


class ArtifactPublic(BaseModel):
    id: str
    job_id: str
    kind: str
    name: str
    bytes: int
    sha256: str
    created_at: datetime
    expired_at: datetime | None = Field(None, description="When the retention sweep removed the file (then 410).")
    url: str


class ArtifactsPublic(BaseModel):
    items: list[ArtifactPublic]


class UploadPublic(BaseModel):
    id: str
    bytes: int
    sha256: str


class MethodPublic(BaseModel):
    name: str
    family: str
    description: str
    json_schema: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    defaults: dict[str, Any]

    model_config = ConfigDict(populate_by_name=True)


class RefusalPublic(BaseModel):
    applies_to: str = Field(
        description="What is refused: a stage family (`slimming`), a method (`gptq`), a method on one backend "
        "(`awq:llmcompressor`), or, among `refused_checkpoints`, a checkpoint quantization (its `quant_method`)."
    )
    reason: str


class FamilyPublic(BaseModel):
    """A supported MoE family, as its adapter declares it."""

    model_type: str = Field(description="The `model_type` of the model's config.json that selects this family.")
    refused: list[RefusalPublic] = Field(description="Stages this family refuses up front, with the reason.")
    refused_checkpoints: list[RefusalPublic] = Field(
        description="Checkpoint quantizations refused for every method, with the reason."
    )
    dequantized_checkpoints: list[str] = Field(
        default_factory=list,
        description="Checkpoint quantizations (`mxfp4`) read dequantized: every stage runs on the dequantized "
        "weights and the output holds none of that format; its manifest's `notes` say so.",
    )


class MethodsPublic(BaseModel):
    methods: list[MethodPublic]
    families: list[FamilyPublic] = Field(description="The model families a job may compress; any other is a 422.")
    recipe_schema: dict[str, Any]
    evaluation_schema: dict[str, Any]


class HealthPublic(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyPublic(BaseModel):
    database: bool
    broker: bool
    workers: int = Field(description="Workers alive now: a heartbeat within stale_after_s.")
    reasons: list[str] = Field(description="Why the service is not ready, in words; empty when it is.")


class ArtifactReceived(BaseModel):
    """How much of an artifact a worker's upload has delivered; ``artifact_id`` once it is recorded."""

    offset: int = Field(description="Bytes received so far: the next chunk starts here.")
    complete: bool
    artifact_id: str | None = None
    sha256: str | None = None


class GpuPublic(BaseModel):
    name: str
    memory_bytes: int


class WorkerPublic(BaseModel):
    """A worker's main process as it reports itself: its host, GPUs (none on a CPU host), version, its jobs."""

    name: str = Field(description="host:pid of the worker's main process.")
    host: str | None
    version: str | None
    gpus: list[GpuPublic] | None = Field(description="Empty on a CPU-only host; null before its first report.")
    started_at: datetime
    beat_at: datetime
    alive: bool = Field(description="Its last beat is younger than stale_after_s.")
    running: int = Field(description="Jobs it runs now, of every team (one per GPU at most).")
    jobs: list[str] = Field(description="Ids of the jobs it runs now: all for an admin key, the team's own for a team.")


class WorkersPublic(BaseModel):
    items: list[WorkerPublic]
