"""A job's events read back in seq order, as pages and as a Server-Sent Events stream."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import anyio
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from moecomp.api.schemas import EventPublic
from moecomp.persistence.database import Database, is_transient
from moecomp.persistence.keys import team_for_key
from moecomp.persistence.models import Job, JobEvent, JobStatus

log = logging.getLogger(__name__)
MAX_EVENTS = 1000
KEEPALIVE_S = 15.0
REVOKED = "revoked"  # what _poll reports instead of a job status once the stream's key stops opening anything


def list_events(session: Session, job_id: str, after: int, limit: int) -> list[EventPublic]:
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > after).order_by(JobEvent.seq).limit(limit)
    return [
        EventPublic(seq=e.seq, time=e.time, level=e.level, kind=e.kind, stage=e.stage, data=e.data)
        for e in session.scalars(query)
    ]


def _poll(db: Database, job_id: str, after: int, key: str) -> tuple[list[EventPublic], str]:
    with db.session() as session:
        if team_for_key(session, key) is None:  # revoked since the stream opened: revocation holds at once
            return [], REVOKED
        # Status first: a worker writes its last events before it finishes the job, so a final status
        # read here means every event is already visible to the events query below.
        status = session.scalar(select(Job.status).where(Job.id == job_id)) or JobStatus.cancelled
        return list_events(session, job_id, after, MAX_EVENTS), status


async def _poll_or_wait(db: Database, job_id: str, after: int, key: str) -> tuple[list[EventPublic], str]:
    """``_poll``; nothing new while the database is unreachable, so that a stream outlives a database restart."""
    try:
        return await run_in_threadpool(_poll, db, job_id, after, key)
    except DBAPIError as exc:
        if not is_transient(exc):
            raise
        log.warning("event stream of job %s: database unreachable (%s)", job_id, exc.orig)
        return [], JobStatus.running


def sse_frame(event: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


async def stream_events(db: Database, job_id: str, after: int, key: str, poll_s: float = 0.5) -> AsyncIterator[str]:
    """SSE frames for events after ``after``, polling every ``poll_s``; ends with `end` once the job is final.

    ``key`` opened the stream; once it is revoked the stream closes without `end`, so a client reconnects
    and that request is refused (401).
    """
    idle = 0.0
    while True:
        events, status = await _poll_or_wait(db, job_id, after, key)
        if status == REVOKED:
            return
        for event in events:
            yield sse_frame(event.kind, event.model_dump_json(), event.seq)
            after = event.seq
        if len(events) == MAX_EVENTS:
            continue
        if JobStatus(status).final:
            yield sse_frame("end", json.dumps({"status": status, "last_seq": after}))
            return
        idle = 0.0 if events else idle + poll_s
        if idle >= KEEPALIVE_S:  # a comment line keeps proxies from closing a quiet stream
            idle = 0.0
            yield ": keepalive\n\n"
        await anyio.sleep(poll_s)
