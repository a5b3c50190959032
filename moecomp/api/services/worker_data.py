"""The data path of workers on other hosts: an upload's bytes out, a job's artifacts in, over HTTP.

Out: an uploaded model is served as the tar of its unpacked folder (tar_stream: the layout from the listing, the
sha256 from one read, kept in ``uploads/<id>.tar.index.json`` beside the folder), with byte ranges for resuming.

In: a worker sends each artifact in chunks, ``PUT .../attempts/{attempt}/artifacts/{name}`` with
``Content-Range: bytes a-b/total`` and the whole file's sha256. Chunks land in ``.<name>.part`` in the attempt's
folder, as a shared-volume worker writes them (artifacts.py): a chunk at the part's end extends it, one at an
earlier offset (a retry) replaces what follows, one past the end is refused (409) with the offset to resume at.
The last chunk is checked against the sha256, fsynced, renamed to ``<name>`` and recorded by
``jobs.record_artifact`` under the job's lease. Every step is fenced by the lease (``X-Moecomp-Worker`` and the
attempt): a worker whose job was re-queued gets 409 and writes nothing. A part is locked (flock) while a chunk
goes in, so a retry racing the request it repeats waits its turn (409 at once, then the worker asks the offset).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from moecomp.api.errors import Conflict, Invalid, NotFound, PayloadTooLarge
from moecomp.api.services.artifacts import MEDIA_TYPES
from moecomp.api.services.jobs import ID_RE
from moecomp.persistence import jobs
from moecomp.persistence.jobs import Lease
from moecomp.persistence.models import Artifact, Upload, new_id
from moecomp.settings import Settings
from moecomp.worker import artifacts as files
from moecomp.worker import tar_stream
from moecomp.worker.artifacts import CHUNK
from moecomp.worker.tar_stream import TarView

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
RANGE_RE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19})$|^bytes \*/0$")
KINDS = tuple(MEDIA_TYPES)
MAX_CHUNK = 1024**3  # one PUT's body; a file of any size goes in as many chunks
OCTETS = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
UPLOAD_ARCNAME = "model"  # the tar of an upload holds its folder as model/...
LEASE_LOST = "X-Moecomp-Lease"  # on a 409: the lease is gone (the worker stops), unlike a 409 to resume elsewhere


# -- out: an upload's bytes ------------------------------------------------------------------------------------


def index_upload(settings: Settings, upload: Upload) -> Path:
    """Write the index of an upload's tar (one read of its files, to hash it) unless it exists; returns it.

    Done when the upload is stored, so that a worker's first fetch of a large model does not wait for the hash; an
    upload stored before this existed is indexed on its first fetch.
    """
    index = settings.uploads_dir / f"{upload.id}.tar{tar_stream.INDEX_SUFFIX}"
    if not index.is_file():
        folder = settings.uploads_dir / upload.relpath
        if not folder.is_dir():
            raise NotFound("the upload's files are missing on the server")
        # A name of its own per call: two at once each write a whole index, the last rename wins.
        tmp = index.with_name(f".{new_id()}{tar_stream.INDEX_SUFFIX}")
        try:
            tar_stream.write_index(folder, tmp, UPLOAD_ARCNAME)
            os.replace(tmp, index)
        finally:
            tmp.unlink(missing_ok=True)
    return index


def upload_tar(session: Session, settings: Settings, upload_id: str) -> tuple[TarView, str]:
    """The tar of an upload's folder and its sha256; 404 for an unknown upload."""
    upload = session.get(Upload, upload_id) if ID_RE.fullmatch(upload_id) else None
    if upload is None:
        raise NotFound("upload not found")
    index = index_upload(settings, upload)
    try:
        return tar_stream.read_index(index), json.loads(index.read_text())["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise NotFound("the upload's files are missing on the server") from exc


# -- in: a job's artifacts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One PUT: bytes ``start..end`` (inclusive) of a file of ``total`` bytes whose sha256 is ``sha256``."""

    lease: Lease
    name: str
    kind: str
    sha256: str
    start: int
    end: int
    total: int


def parse_chunk(lease: Lease, name: str, kind: str, sha256: str, content_range: str) -> Chunk:
    """Check a PUT's path and headers; 422 naming the one that is wrong."""
    if not NAME_RE.fullmatch(name) or name.endswith(".part"):
        raise Invalid(("path", "name"), "an artifact name is 1-200 letters, digits, '.', '_' or '-', not a .part")
    if kind not in KINDS:
        raise Invalid(("header", "x-artifact-kind"), f"the artifact kind must be one of {', '.join(KINDS)}")
    if not SHA256_RE.fullmatch(sha256):
        raise Invalid(("header", "x-checksum-sha256"), "the whole file's sha256: 64 lowercase hex digits")
    match = RANGE_RE.fullmatch(content_range.strip())
    if match is None:
        raise Invalid(("header", "content-range"), "Content-Range must be 'bytes FIRST-LAST/TOTAL' (or 'bytes */0')")
    if match.group(1) is None:
        return Chunk(lease, name, kind, sha256, 0, -1, 0)
    start, end, total = (int(g) for g in match.groups())
    if not start <= end < total:
        raise Invalid(("header", "content-range"), f"bytes {start}-{end} do not lie inside a file of {total} bytes")
    if end - start + 1 > MAX_CHUNK:
        raise PayloadTooLarge(f"one chunk may hold at most {MAX_CHUNK} bytes; send the file in several")
    return Chunk(lease, name, kind, sha256, start, end, total)


def attempt_folder(settings: Settings, lease: Lease) -> Path:
    return files.attempt_dir(settings.artifacts_dir, lease.job_id, lease.attempt)


def check_lease(session: Session, lease: Lease) -> None:
    """409 unless ``lease`` still owns its running job (the read transaction ends here)."""
    held = jobs.holds(session, lease)
    session.rollback()
    if not held:
        raise Conflict(
            f"job {lease.job_id} is not running as attempt {lease.attempt} of {lease.worker}: it was re-queued "
            "or has ended, and another attempt decides its artifacts",
            headers={LEASE_LOST: "lost"},
        )


def recorded_row(session: Session, settings: Settings, lease: Lease, name: str) -> Artifact | None:
    """The artifact this attempt already recorded under ``name``, if any (the read transaction ends here)."""
    relpath = (attempt_folder(settings, lease) / name).relative_to(settings.artifacts_dir).as_posix()
    row = session.scalar(select(Artifact).where(Artifact.job_id == lease.job_id, Artifact.relpath == relpath))
    session.rollback()
    return row


def recorded(session: Session, settings: Settings, chunk: Chunk) -> Artifact | None:
    """The artifact already recorded for this chunk's file (a retry of a finished upload); 409 if it was
    recorded with another sha256."""
    row = recorded_row(session, settings, chunk.lease, chunk.name)
    if row is not None and row.sha256 != chunk.sha256:
        raise Conflict(f"{chunk.name} is recorded already with sha256 {row.sha256}, not {chunk.sha256}")
    return row


def part_offset(settings: Settings, lease: Lease, name: str) -> int:
    """How many bytes of ``name`` this attempt has received so far (0: none)."""
    part = attempt_folder(settings, lease) / f".{name}.part"
    return part.stat().st_size if part.is_file() else 0


async def receive_chunk(settings: Settings, chunk: Chunk, body: AsyncIterator[bytes]) -> int:
    """Write the chunk into the part file; returns the part's size after it. 409 for a chunk past the part's end
    or a part another request is writing; 422 for a body that is not as long as Content-Range says."""
    folder = attempt_folder(settings, chunk.lease)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{chunk.name}.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"another request is writing {chunk.name}; ask its offset and resume", headers={"Retry-After": "1"}
            ) from None
        if (folder / chunk.name).exists():  # sealed by a request this one repeats: its record answers
            if os.fstat(fd).st_size == 0:  # made by this request's open: no part may stay behind
                os.unlink(part)
            raise Conflict(f"{chunk.name} is complete; ask its offset", headers={"Retry-After": "1"})
        size = os.fstat(fd).st_size
        if chunk.start > size:
            raise Conflict(f"{chunk.name} has {size} bytes so far: resume at offset {size}", headers=_offset(size))
        os.ftruncate(fd, chunk.start)
        os.lseek(fd, chunk.start, os.SEEK_SET)
        want = chunk.end - chunk.start + 1
        got = await _copy(body, fd, want)
        if got != want:
            raise Invalid(("body",), f"the body has {got} bytes but Content-Range announces {want}")
        return chunk.start + got
    finally:
        os.close(fd)  # closing releases the lock


async def _copy(body: AsyncIterator[bytes], fd: int, want: int) -> int:
    """Write the body to ``fd`` (never past ``want`` bytes); returns how many bytes the body had, up to want + 1."""
    got = 0
    try:
        async for data in body:
            if keep := data[: max(0, want - got)]:
                os.write(fd, keep)
            got += len(data)
            if got > want:
                break
    except ClientDisconnect:  # the worker died or its connection dropped: what arrived stays, to resume from
        pass
    return got


def _offset(size: int) -> dict[str, str]:
    return {"Upload-Offset": str(size)}


def seal(session: Session, settings: Settings, chunk: Chunk) -> Artifact:
    """The part is whole: check its sha256, move it to its name and record it under the lease.

    A wrong sha256 removes the part (422: send the file again from offset 0); a lease lost meanwhile is 409.
    """
    folder = attempt_folder(settings, chunk.lease)
    part, dest = folder / f".{chunk.name}.part", folder / chunk.name
    digest = hashlib.sha256()
    try:
        f = open(part, "rb")  # noqa: SIM115  (closed by the with below)
    except FileNotFoundError:  # a retry of the last chunk sealed it first
        return _sealed_meanwhile(session, settings, chunk)
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a retry of the last chunk waits, then finds the file sealed
        if dest.exists():
            return _sealed_meanwhile(session, settings, chunk)
        while data := f.read(CHUNK):
            digest.update(data)
        os.fsync(f.fileno())
        if digest.hexdigest() != chunk.sha256:
            part.unlink(missing_ok=True)
            raise Invalid(
                ("header", "x-checksum-sha256"),
                f"the {chunk.total} bytes received hash to {digest.hexdigest()}, not {chunk.sha256}; send the file "
                "again from offset 0",
            )
        os.replace(part, dest)
    relpath = dest.relative_to(settings.artifacts_dir).as_posix()
    row = jobs.record_artifact(
        session, chunk.lease, kind=chunk.kind, name=chunk.name, relpath=relpath, size=chunk.total, sha256=chunk.sha256
    )
    if row is None:
        check_lease(session, chunk.lease)  # raises: the lease was lost while the last chunk came in
    assert row is not None
    return row


def _sealed_meanwhile(session: Session, settings: Settings, chunk: Chunk) -> Artifact:
    row = recorded(session, settings, chunk)
    if row is None:
        raise Conflict(f"{chunk.name} is being recorded; ask its offset", headers={"Retry-After": "1"})
    return row


def prune(session: Session, settings: Settings, lease: Lease, keep_own: bool) -> None:
    """Remove the files of the job's other attempts (and of this one unless ``keep_own``): the worker's
    ``remove_other_attempts`` and ``_drop_outputs`` for a store it cannot reach. Allowed to the lease holder,
    and to the attempt that ended the job (it prunes once more after its end)."""
    allowed = jobs.holds(session, lease) or jobs.ended_by(session, lease)
    session.rollback()
    if not allowed:
        check_lease(session, lease)
    files.remove_other_attempts(settings.artifacts_dir, lease.job_id, lease.attempt)
    if not keep_own:
        shutil.rmtree(attempt_folder(settings, lease), ignore_errors=True)
