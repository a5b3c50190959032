"""/v1/jobs: submit, list, read, cancel, delete, events (paged and streamed), artifacts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema

from moecomp.api.conditional import NOT_MODIFIED, IfNoneMatch, conditional_json
from moecomp.api.deps import CeleryDep, DatabaseDep, KeyDep, SessionDep, SettingsDep, TeamDep
from moecomp.api.responses import json_response, refusals
from moecomp.api.schemas import ArtifactsPublic, EventsPublic, JobCreate, JobPublic, JobsPublic
from moecomp.api.services import artifacts, events, jobs
from moecomp.persistence.models import JobStatus
from moecomp.worker.queue import enqueue_job

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=refusals(401))
MAX_SEQ = 2**31 - 1  # event seq is a 32-bit column
# A header is absent or a number, never JSON null: the document says so (``int | None`` would add a null).
SEQ_HEADER = WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_SEQ})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic, responses=refusals(400, 413, 429))
def create_job(
    payload: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    team: TeamDep,
    celery_app: CeleryDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobPublic:
    submitted = jobs.submit_job(
        session, settings, team, payload, idempotency_key, enqueue=lambda job_id: enqueue_job(celery_app, job_id)
    )
    if not submitted.created:
        response.status_code = status.HTTP_200_OK
    return jobs.job_public(submitted.job)


@router.get("", response_model=JobsPublic, responses=NOT_MODIFIED)
def list_jobs(
    session: SessionDep,
    team: TeamDep,
    status: JobStatus | None = None,
    model: Annotated[str | None, Query(max_length=1000, pattern=r"^[^\x00]*$")] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    page, next_cursor = jobs.list_jobs(session, team, status, model, limit, cursor)
    listing = JobsPublic(items=[jobs.job_public(j) for j in page], next_cursor=next_cursor)
    return conditional_json(listing, if_none_match)


@router.get("/{job_id}", response_model=JobPublic, responses={**refusals(404), **NOT_MODIFIED})
def get_job(job_id: str, session: SessionDep, team: TeamDep, if_none_match: IfNoneMatch = None) -> Response:
    return conditional_json(jobs.job_public(jobs.get_job(session, team, job_id)), if_none_match)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=refusals(404, 409))
def cancel_job(job_id: str, session: SessionDep, team: TeamDep) -> JobPublic:
    return jobs.job_public(jobs.cancel_job(session, team, job_id))


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=refusals(404, 409))
def delete_job(job_id: str, session: SessionDep, settings: SettingsDep, team: TeamDep) -> Response:
    """Remove an ended job's artifacts and the job (404 afterwards); a queued or running job is refused with 409."""
    jobs.delete_job(session, settings, team, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/events", response_model=EventsPublic, responses=refusals(404))
def list_events(
    job_id: str,
    session: SessionDep,
    team: TeamDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=events.MAX_EVENTS)] = 500,
) -> Response:
    job = jobs.get_job(session, team, job_id)
    items = events.list_events(session, job.id, after, limit)
    return json_response(EventsPublic(items=items, last_seq=items[-1].seq if items else after))


@router.get("/{job_id}/events/stream", response_class=StreamingResponse, responses=refusals(404))
def stream_events(
    job_id: str,
    session: SessionDep,
    team: TeamDep,
    key: KeyDep,
    db: DatabaseDep,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_SEQ), SEQ_HEADER] = None,
) -> StreamingResponse:
    job = jobs.get_job(session, team, job_id)
    start = max(after, last_event_id or 0)  # a reconnecting EventSource resumes after its last event
    return StreamingResponse(
        events.stream_events(db, job.id, start, key or ""),  # the stream ends once this key is revoked
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, responses=refusals(404))
def list_artifacts(job_id: str, session: SessionDep, team: TeamDep) -> ArtifactsPublic:
    return ArtifactsPublic(items=artifacts.list_artifacts(session, jobs.get_job(session, team, job_id)))
