"""Artifact files: written to a temporary name, hashed while written, fsynced, then renamed.

A reader (the download endpoint) therefore never sees a half-written file under a final name, and
the recorded sha256 is of the bytes that reached the disk. Each attempt of a job writes under its
own folder ``<artifacts_dir>/<job_id>/<attempt>/``; earlier attempts' folders are removed, so a
finished job has exactly one set.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from moecomp.worker.errors import DiskFull

CHUNK = 1 << 20


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    sha256: str


class _HashingWriter:
    """A write-only file object that counts and hashes what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.size, self.digest = raw, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(dest: Path) -> Iterator[_HashingWriter]:
    """Yield a hashing writer on ``dest``'s temporary name; rename it to ``dest`` only on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            writer = _HashingWriter(raw)
            yield writer
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        if exc.errno in DiskFull.ERRNOS:  # say where, and measure while the partial file still holds its space
            raise DiskFull.at(dest) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(src: Path, dest: Path) -> WrittenFile:
    with atomic_writer(dest) as out, open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            out.write(chunk)
    return WrittenFile(dest, out.size, out.digest.hexdigest())


def write_bytes(data: bytes, dest: Path) -> WrittenFile:
    with atomic_writer(dest) as out:
        out.write(data)
    return WrittenFile(dest, out.size, out.digest.hexdigest())


def members(src: Path) -> list[Path]:
    """The regular files under ``src`` in the order a checkpoint tar holds them (symlinks left out)."""
    return [p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink()]


def member_info(path: Path, arcname: str) -> tarfile.TarInfo:
    """A regular file's tar header: its name, size and whole-second mtime; mode 0644, owner 0 and unnamed.

    Nothing else of the file's stat goes in, so a folder's tar is reproducible from its listing (tar_stream).
    """
    info = tarfile.TarInfo(arcname)
    stat = path.stat()
    info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
    return info


def tar_folder(src: Path, dest: Path, arcname: str) -> WrittenFile:
    """An uncompressed tar of ``src`` (safetensors do not compress), members under ``arcname/``, sorted.

    The worker no longer writes it (tar_stream serves the same bytes from the folder); tests compare with it.
    """
    with atomic_writer(dest) as out:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for path in members(src):
                with open(path, "rb") as f:
                    tar.addfile(member_info(path, f"{arcname}/{path.relative_to(src).as_posix()}"), f)
    return WrittenFile(dest, out.size, out.digest.hexdigest())


def move_folder(src: Path, dest: Path) -> Path:
    """Move ``src`` to ``dest``: a rename on one file system, else a copy to a temporary name then a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
        return dest
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        for path in members(src):
            (tmp / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp / path.relative_to(src))
        os.replace(tmp, dest)
    except OSError as exc:
        if exc.errno in DiskFull.ERRNOS:
            raise DiskFull.at(dest) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    return dest


def attempt_dir(artifacts_dir: Path, job_id: str, attempt: int) -> Path:
    return artifacts_dir / job_id / str(attempt)


def remove_other_attempts(artifacts_dir: Path, job_id: str, attempt: int) -> None:
    """Delete the files of every other attempt of the job (a crashed run's partial output)."""
    job_dir = artifacts_dir / job_id
    if not job_dir.is_dir():
        return
    for child in job_dir.iterdir():
        if child.name != str(attempt):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def remove_job_files(artifacts_dir: Path, job_id: str) -> bool:
    """Delete every file of the job (all attempts); True if it had a folder."""
    job_dir = artifacts_dir / job_id
    existed = job_dir.is_dir()
    shutil.rmtree(job_dir, ignore_errors=True)
    return existed
