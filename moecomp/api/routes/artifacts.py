"""/v1/artifacts/{id}/content: the bytes, streamed, with single byte ranges, its sha256 as ETag, a download name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import FileResponse

from moecomp.api.conditional import IfNoneMatch
from moecomp.api.deps import SessionDep, SettingsDep, TeamDep
from moecomp.api.responses import content_response, refusals
from moecomp.api.services import artifacts

router = APIRouter(prefix="/artifacts", tags=["artifacts"], responses=refusals(401, 404, 410, 416))
CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    206: {"description": "The requested byte range."},
    304: {"description": "Not modified: If-None-Match names the current ETag."},
}


# Two registrations rather than api_route(methods=[GET, HEAD]): each method gets its own OpenAPI operation id.
@router.get("/{artifact_id}/content", response_class=FileResponse, responses=CONTENT_RESPONSES)
@router.head("/{artifact_id}/content", response_class=FileResponse, responses=CONTENT_RESPONSES)
def artifact_content(
    artifact_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    team: TeamDep,
    range: Annotated[str | None, Header()] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    artifact = artifacts.get_artifact(session, team, artifact_id)
    return content_response(
        request,
        artifacts.artifact_body(settings, artifact),
        artifact.sha256,
        range_header=range,
        if_none_match=if_none_match,
        filename=artifact.name,
        media_type=artifacts.MEDIA_TYPES.get(artifact.kind, "application/octet-stream"),
    )
