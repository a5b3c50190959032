"""Model uploads: a tar streamed to a temp file (size-capped, hashed on the way), checked, then unpacked.

Only plain files and folders are accepted: absolute names, ``..``, links and devices are refused before
anything is extracted, and extraction still uses tarfile's "data" filter as a second guard. A refused
upload leaves no file and no row behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import anyio
from sqlalchemy.orm import Session

from moecomp.api.errors import Invalid, PayloadTooLarge, UnsupportedMediaType
from moecomp.persistence.models import Team, Upload, new_id
from moecomp.settings import Settings

ACCEPTED_TYPES = ("application/x-tar", "application/tar", "application/gzip", "application/x-gzip")
MAX_MEMBERS = 100_000
LOC = ("body",)


def check_content_type(content_type: str | None) -> None:
    if (content_type or "").split(";")[0].strip().lower() not in ACCEPTED_TYPES:
        raise UnsupportedMediaType("send the model folder as a tar archive with Content-Type application/x-tar")


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"upload larger than the limit of {limit} bytes")


async def receive(chunks: AsyncIterator[bytes], dest: Path, limit: int) -> tuple[int, str]:
    """Write the body to ``dest``; return (bytes, sha256). Raises 413 past ``limit`` (``dest`` is removed)."""
    digest, size = hashlib.sha256(), 0
    try:
        async with await anyio.open_file(dest, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                digest.update(chunk)
                await out.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise Invalid(LOC, f"archive member {member.name!r} would leave the upload folder")
    if not (member.isfile() or member.isdir()):
        raise Invalid(LOC, f"archive member {member.name!r} is a link or device; only files and folders are allowed")


def _check_members(archive: tarfile.TarFile, limit: int) -> None:
    total = 0
    for count, member in enumerate(archive, start=1):
        if count > MAX_MEMBERS:
            raise Invalid(LOC, f"archive has more than {MAX_MEMBERS} members")
        _check_member(member)
        total += member.size
        if total > limit:  # a compressed archive may unpack far beyond its own size
            raise too_large(limit)


def _model_folder(root: Path) -> Path:
    """The folder holding config.json: the archive root, or its single top-level folder."""
    if (root / "config.json").is_file():
        return root
    entries = list(root.iterdir())
    if len(entries) == 1 and (entries[0] / "config.json").is_file():
        return entries[0]
    raise Invalid(LOC, "the archive has no config.json at its root or in its single top-level folder")


def _check_no_remote_code(folder: Path) -> None:
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        try:
            config = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            raise Invalid(LOC, f"{name} is not valid JSON") from None
        if isinstance(config, dict) and "auto_map" in config:
            raise Invalid(LOC, f"{name} asks for remote code (auto_map), which this server does not allow")


def unpack(archive_path: Path, dest: Path, settings: Settings) -> Path:
    """Check and extract the archive into ``dest``; return the model folder. Raises Invalid/413."""
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            _check_members(archive, settings.upload_limit_bytes)
            archive.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise Invalid(LOC, f"not a readable tar archive ({exc})") from None
    folder = _model_folder(dest)
    if not settings.allow_remote_code:
        _check_no_remote_code(folder)
    return folder


def store_upload(session: Session, settings: Settings, team: Team, tmp: Path, size: int, sha256: str) -> Upload:
    """Unpack ``tmp`` into uploads_dir/<id>/ and record it; on refusal nothing stays behind."""
    upload_id = new_id()
    dest = settings.uploads_dir / upload_id
    try:
        folder = unpack(tmp, dest, settings)
        upload = Upload(
            id=upload_id,
            team_id=team.id,
            relpath=folder.relative_to(settings.uploads_dir).as_posix(),
            bytes=size,
            sha256=sha256,
        )
        session.add(upload)
        session.commit()
        return upload
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
