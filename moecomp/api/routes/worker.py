"""/v1/worker: what a worker on another host needs of the API, with a worker credential (never a team key).

- ``GET|HEAD /v1/worker/uploads/{upload_id}/content``: an uploaded model as a tar, with ranges and its sha256;
- ``GET  /v1/worker/jobs/{job_id}/attempts/{attempt}/artifacts/{name}``: how much of an artifact arrived;
- ``PUT  /v1/worker/jobs/{job_id}/attempts/{attempt}/artifacts/{name}``: one chunk of it (services/worker_data);
- ``POST /v1/worker/jobs/{job_id}/attempts/{attempt}/prune``: remove the job's other attempts' files.

The job routes name the lease: the attempt in the path, the worker (the lease's holder) in ``X-Moecomp-Worker``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from moecomp.api.conditional import IfNoneMatch
from moecomp.api.deps import SessionDep, SettingsDep, WorkerKeyDep
from moecomp.api.responses import VALIDATION, content_response, refusals
from moecomp.api.schemas import ArtifactReceived
from moecomp.api.services import worker_data
from moecomp.persistence.jobs import Lease

router = APIRouter(prefix="/worker", tags=["worker"], responses=refusals(401, 403))
JOB_ID = Path(pattern=r"^[0-9a-f]{32}$")
ATTEMPT = Path(ge=1, le=1000)
WorkerHeader = Annotated[str, Header(alias="X-Moecomp-Worker", min_length=1, max_length=200)]


@router.get("/uploads/{upload_id}/content", response_class=FileResponse, responses=refusals(404, 416))
@router.head("/uploads/{upload_id}/content", response_class=FileResponse, responses=refusals(404, 416))
def upload_content(
    upload_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _key: WorkerKeyDep,
    range: Annotated[str | None, Header()] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    body, sha256 = worker_data.upload_tar(session, settings, upload_id)
    return content_response(
        request,
        body,
        sha256,
        range_header=range,
        if_none_match=if_none_match,
        filename=f"{upload_id}.tar",
        media_type="application/x-tar",
    )


ARTIFACT = "/jobs/{job_id}/attempts/{attempt}/artifacts/{name}"


@router.get(ARTIFACT, response_model=ArtifactReceived, responses={**refusals(409), 422: VALIDATION})
def artifact_offset(
    job_id: Annotated[str, JOB_ID],
    attempt: Annotated[int, ATTEMPT],
    name: str,
    worker: WorkerHeader,
    session: SessionDep,
    settings: SettingsDep,
    _key: WorkerKeyDep,
) -> ArtifactReceived:
    """The bytes received so far (resume there); ``artifact_id`` once the artifact is recorded."""
    lease = Lease(job_id, worker, attempt)
    worker_data.check_lease(session, lease)
    done = worker_data.recorded_row(session, settings, lease, name)
    if done is not None:
        return ArtifactReceived(offset=done.bytes, complete=True, artifact_id=done.id, sha256=done.sha256)
    return ArtifactReceived(offset=worker_data.part_offset(settings, lease, name), complete=False)


@router.put(
    ARTIFACT,
    response_model=ArtifactReceived,
    responses={**refusals(409, 413), 422: VALIDATION},
    openapi_extra=worker_data.OCTETS,
)
async def put_artifact_chunk(
    job_id: Annotated[str, JOB_ID],
    attempt: Annotated[int, ATTEMPT],
    name: str,
    request: Request,
    worker: WorkerHeader,
    session: SessionDep,
    settings: SettingsDep,
    _key: WorkerKeyDep,
    kind: Annotated[str, Header(alias="X-Artifact-Kind")],
    sha256: Annotated[str, Header(alias="X-Checksum-Sha256")],
    content_range: Annotated[str, Header(alias="Content-Range")],
) -> ArtifactReceived:
    """One chunk of an artifact; the last one checks the sha256 and records the artifact (once: a retry of a
    recorded artifact is answered with it)."""
    chunk = worker_data.parse_chunk(Lease(job_id, worker, attempt), name, kind, sha256, content_range)
    await run_in_threadpool(worker_data.check_lease, session, chunk.lease)
    done = await run_in_threadpool(worker_data.recorded, session, settings, chunk)
    if done is None:
        offset = await worker_data.receive_chunk(settings, chunk, request.stream())
        if offset < chunk.total:
            return ArtifactReceived(offset=offset, complete=False)
        done = await run_in_threadpool(worker_data.seal, session, settings, chunk)
    return ArtifactReceived(offset=done.bytes, complete=True, artifact_id=done.id, sha256=done.sha256)


@router.post("/jobs/{job_id}/attempts/{attempt}/prune", status_code=204, responses=refusals(409))
def prune_attempts(
    job_id: Annotated[str, JOB_ID],
    attempt: Annotated[int, ATTEMPT],
    worker: WorkerHeader,
    session: SessionDep,
    settings: SettingsDep,
    _key: WorkerKeyDep,
    keep_own: bool = True,
) -> Response:
    worker_data.prune(session, settings, Lease(job_id, worker, attempt), keep_own)
    return Response(status_code=204)
