"""Artifacts of a team's jobs: listing, and the bytes behind one with a checked single byte range."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from moecomp.api.errors import Gone, NotFound
from moecomp.api.schemas import ArtifactPublic
from moecomp.api.services.jobs import ID_RE
from moecomp.persistence.models import Artifact, Job, Team
from moecomp.settings import Settings
from moecomp.worker import tar_stream
from moecomp.worker.tar_stream import FileView, TarView

MEDIA_TYPES = {
    "checkpoint": "application/x-tar",
    "manifest": "application/json",
    "report": "application/json",
    "report_html": "text/html; charset=utf-8",
    "model_card": "text/markdown; charset=utf-8",
    "log": "text/plain; charset=utf-8",
}


def artifact_public(artifact: Artifact) -> ArtifactPublic:
    return ArtifactPublic(
        id=artifact.id,
        job_id=artifact.job_id,
        kind=artifact.kind,
        name=artifact.name,
        bytes=artifact.bytes,
        sha256=artifact.sha256,
        created_at=artifact.created_at,
        expired_at=artifact.expired_at,
        url=f"/v1/artifacts/{artifact.id}/content",
    )


def list_artifacts(session: Session, job: Job) -> list[ArtifactPublic]:
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.created_at, Artifact.id))
    return [artifact_public(a) for a in rows]


def get_artifact(session: Session, team: Team, artifact_id: str) -> Artifact:
    if not ID_RE.fullmatch(artifact_id):
        raise NotFound("artifact not found")
    row = session.execute(
        select(Artifact)
        .join(Job, Job.id == Artifact.job_id)
        .where(Artifact.id == artifact_id, Job.team_id == team.id, Job.deleted_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("artifact not found")
    return row


def artifact_body(settings: Settings, artifact: Artifact) -> FileView | TarView:
    """The artifact's bytes: its file, or a checkpoint tar streamed from its folder (tar_stream); 410 once expired,
    404 for a recorded path that is missing or would leave the artifacts folder."""
    if artifact.expired_at is not None:
        raise Gone(
            f"artifact {artifact.name} expired on {artifact.expired_at:%Y-%m-%d}: files are kept "
            f"{settings.retention_days:g} days after their job ends; the job's events and report metrics remain"
        )
    root = settings.artifacts_dir.resolve()
    path = (root / artifact.relpath).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound("artifact file is missing on the server")
    if not tar_stream.is_index(path):
        return FileView(path)
    try:
        return tar_stream.read_index(path)
    except (OSError, ValueError, KeyError) as exc:
        raise NotFound("artifact file is missing on the server") from exc
