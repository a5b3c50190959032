"""Model uploads: a tar streamed to a temp file (size-capped, hashed on the way), checked, then unpacked.

Only plain files and folders are accepted: absolute names, ``..``, links, devices, fifos and (unless
settings.allow_remote_code) Python files are refused before anything is extracted, and extraction still
uses tarfile's "data" filter as a second guard. The unpacked tar stream counts against the upload limit
too, so a compressed archive cannot unpack (or make tarfile buffer a header) beyond it. A refused upload
leaves no file and no row behind.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import shutil
import tarfile
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

import anyio
from sqlalchemy.orm import Session

from moecomp.api.errors import Invalid, PayloadTooLarge, UnsupportedMediaType
from moecomp.api.services.model_sources import refuse_remote_code
from moecomp.persistence.models import Team, Upload, new_id
from moecomp.settings import Settings

ACCEPTED_TYPES = ("application/x-tar", "application/tar", "application/gzip", "application/x-gzip")
MAX_MEMBERS = 100_000
LOC = ("body",)
CODE_SUFFIXES = (".py", ".pyc")  # what transformers' dynamic modules (auto_map) import


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...


# Compressed tars by their magic bytes, opened as streams so that the unpacked size can be capped.
DECOMPRESSORS: dict[bytes, Callable[[IO[bytes]], _Stream]] = {
    b"\x1f\x8b": lambda raw: gzip.GzipFile(fileobj=raw),
    b"BZh": lambda raw: bz2.BZ2File(raw),
    b"\xfd7zXZ\x00": lambda raw: lzma.LZMAFile(raw),
}


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


class _CappedStream:
    """The unpacked tar stream, refusing (413) to be read or skipped past ``limit`` bytes.

    tarfile reads a long-name or pax header whole into memory, and skipping a member of a compressed
    archive means unpacking it: both are checked before they happen. Unpacking errors (a truncated or
    corrupt stream) surface as tarfile.ReadError.
    """

    def __init__(self, stream: _Stream, limit: int) -> None:
        # tarfile reads whole blocks, also past the end of an archive just under the limit
        self._stream, self._limit = stream, limit + tarfile.RECORDSIZE

    def _check(self, end: int) -> None:
        if end > self._limit:
            raise too_large(self._limit - tarfile.RECORDSIZE)

    def read(self, size: int = -1) -> bytes:
        position = self._stream.tell()
        size = self._limit + 1 - position if size < 0 else size
        self._check(position + size)
        try:
            return self._stream.read(size)
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            raise tarfile.ReadError(f"the compressed stream is truncated or corrupt: {exc}") from None

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._check(offset)
        try:
            return self._stream.seek(offset, whence)
        except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            raise tarfile.ReadError(f"the compressed stream is truncated or corrupt: {exc}") from None

    def tell(self) -> int:
        return self._stream.tell()


def _open_archive(raw: IO[bytes], limit: int) -> tarfile.TarFile:
    magic = raw.read(6)
    raw.seek(0)
    opener = next((open_ for prefix, open_ in DECOMPRESSORS.items() if magic.startswith(prefix)), None)
    stream = opener(raw) if opener is not None else raw
    return tarfile.open(fileobj=_CappedStream(stream, limit), mode="r:")  # type: ignore[call-overload]


def _check_member(member: tarfile.TarInfo, allow_code: bool) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise Invalid(LOC, f"archive member {member.name!r} would leave the upload folder")
    if not (member.isfile() or member.isdir()):
        raise Invalid(
            LOC, f"archive member {member.name!r} is a link, device or fifo; only files and folders are allowed"
        )
    if not allow_code and member.isfile() and name.suffix.lower() in CODE_SUFFIXES:
        raise Invalid(LOC, f"archive member {member.name!r} is Python code, which this server does not run")


def _check_members(archive: tarfile.TarFile, limit: int, allow_code: bool) -> None:
    total = 0
    for count, member in enumerate(archive, start=1):
        if count > MAX_MEMBERS:
            raise Invalid(LOC, f"archive has more than {MAX_MEMBERS} members")
        _check_member(member, allow_code)
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


def unpack(archive_path: Path, dest: Path, settings: Settings) -> Path:
    """Check and extract the archive into ``dest``; return the model folder. Raises Invalid/413."""
    limit, allow_code = settings.upload_limit_bytes, settings.allow_remote_code
    try:
        with archive_path.open("rb") as raw, _open_archive(raw, limit) as archive:
            _check_members(archive, limit, allow_code)
            archive.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise Invalid(LOC, f"not a readable tar archive ({exc})") from None
    folder = _model_folder(dest)
    if not allow_code:
        refuse_remote_code(folder, LOC)
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
