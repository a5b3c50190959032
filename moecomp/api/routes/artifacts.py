"""/v1/artifacts/{id}/content: the file, with single byte ranges, its sha256 as ETag, a download name."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import FileResponse

from moecomp.api.deps import SessionDep, SettingsDep, TeamDep
from moecomp.api.services import artifacts

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


@router.api_route("/{artifact_id}/content", methods=["GET", "HEAD"], response_class=FileResponse)
def artifact_content(
    artifact_id: str,
    session: SessionDep,
    settings: SettingsDep,
    team: TeamDep,
    range: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    artifact = artifacts.get_artifact(session, team, artifact_id)
    path = artifacts.artifact_file(settings, artifact)
    etag = f'"{artifact.sha256}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    artifacts.check_range(range, path.stat().st_size)
    return FileResponse(
        path,
        filename=artifact.name,
        media_type=artifacts.MEDIA_TYPES.get(artifact.kind, "application/octet-stream"),
        headers={"ETag": etag, "X-Checksum-Sha256": artifact.sha256},
    )
