"""/v1/models: upload a model folder as a tar archive; jobs then name it as {"kind": "upload"}."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from moecomp.api.deps import SessionDep, SettingsDep, TeamDep
from moecomp.api.responses import VALIDATION, refusals
from moecomp.api.schemas import UploadPublic
from moecomp.api.services import uploads, worker_data
from moecomp.persistence.models import new_id

router = APIRouter(prefix="/models", tags=["models"])
# The body is streamed from request.stream(), so FastAPI cannot infer it: declare it for clients and fuzzers.
TAR_BODY = {
    "requestBody": {
        "required": True,
        "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in uploads.ACCEPTED_TYPES},
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadPublic,
    responses={**refusals(401, 413, 415, 507), 422: VALIDATION},
    openapi_extra=TAR_BODY,
)
async def upload_model(request: Request, session: SessionDep, settings: SettingsDep, team: TeamDep) -> UploadPublic:
    uploads.check_content_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.upload_limit_bytes:
        raise uploads.too_large(settings.upload_limit_bytes)
    # The key check's read transaction must not stay open while a large body streams in.
    await run_in_threadpool(session.rollback)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.uploads_dir / f".incoming-{new_id()}.tar"
    size, sha256 = await uploads.receive(request.stream(), tmp, settings.upload_limit_bytes)
    upload = await run_in_threadpool(uploads.store_upload, session, settings, team, tmp, size, sha256)
    await run_in_threadpool(worker_data.index_upload, settings, upload)  # served to workers on other hosts
    return UploadPublic(id=upload.id, bytes=upload.bytes, sha256=upload.sha256)
