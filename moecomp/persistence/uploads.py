"""Where an uploaded model lives on disk; shared by the API (which writes it) and the worker (which reads it)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from moecomp.persistence.models import Upload
from moecomp.settings import Settings


def upload_path(settings: Settings, upload: Upload) -> Path:
    """The unpacked checkpoint folder (the one holding config.json) of ``upload``."""
    return settings.uploads_dir / upload.relpath


def find_upload(session: Session, team_id: str, upload_id: str) -> Upload | None:
    """The upload ``upload_id`` if it belongs to ``team_id``."""
    upload = session.get(Upload, upload_id)
    return upload if upload is not None and upload.team_id == team_id else None
