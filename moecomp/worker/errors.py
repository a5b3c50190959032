"""Map what went wrong in a job to an error code a person can act on, and a one-line message."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from pydantic import ValidationError

from moecomp.compression.context import Cancelled


class JobError(Exception):
    """An error the runner raises with its code already decided."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DiskFull(OSError):
    """No space (or no quota) left while writing ``path``; ``free`` is what its file system had left then."""

    ERRNOS = (errno.ENOSPC, errno.EDQUOT)
    # How libraries that wrap the OS error (safetensors' Rust writer, torch) still say it.
    TEXTS = ("no space left on device", "disk quota exceeded", "os error 28)", "os error 122)")

    def __init__(self, path: Path | None, free: int | None) -> None:
        super().__init__(errno.ENOSPC, "no space left on device", str(path) if path else None)
        self.path, self.free = path, free

    @classmethod
    def at(cls, path: Path | None) -> DiskFull:
        return cls(path, free_bytes(path) if path else None)

    @property
    def message(self) -> str:
        where = f"writing {self.path}" if self.path else "writing the job's files"
        room = f" ({self.free / 2**20:.1f} MiB free on that file system)" if self.free is not None else ""
        return f"the disk is full {where}{room}. Free space (or raise the quota) and submit the job again."


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return None


def disk_full(exc: BaseException, where: Path | None = None) -> DiskFull | None:
    """The DiskFull behind ``exc`` (or its causes), naming the failed file or else ``where``; None if not one."""
    seen: BaseException | None = exc
    for _ in range(10):  # the exception and its causes; a hand-made cycle must not loop forever
        if seen is None:
            return None
        if isinstance(seen, DiskFull):
            return seen
        if isinstance(seen, OSError) and seen.errno in DiskFull.ERRNOS:
            return DiskFull.at(Path(seen.filename) if seen.filename else where)
        if any(text in str(seen).lower() for text in DiskFull.TEXTS):
            return DiskFull.at(where)
        seen = seen.__cause__ or seen.__context__
    return None


class JobTimeout(Exception):
    """The job passed settings.job_time_limit_s."""


class LeaseLost(Exception):
    """Another attempt owns the job now (the reaper re-queued it); this one must stop without writing."""


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return "out of memory" in str(exc).lower() and isinstance(exc, RuntimeError)


def _is_missing_model(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    names = {type(e).__name__ for e in (exc, exc.__cause__) if e is not None}
    # huggingface_hub's errors, matched by name so that this module does not import the hub client.
    hub = {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError", "LocalEntryNotFoundError"}
    return bool(names & hub)


def _refused_by_plan(exc: BaseException) -> tuple[str, str] | None:
    """A job the library's plan refused before any work: its message already names the numbers."""
    from moecomp.compression.activations import HostMemoryError  # torch, only once a job failed
    from moecomp.compression.planning import DiskSpaceError

    if isinstance(exc, DiskSpaceError):
        return "disk_full", exc.message
    if isinstance(exc, HostMemoryError):
        return "out_of_memory", str(exc)
    return None


def classify(exc: BaseException, where: Path | None = None) -> tuple[str, str]:
    """(error_code, message) for an exception that ended a job; ``where``: the folder it was writing to."""
    if isinstance(exc, JobError):
        return exc.code, exc.message
    if isinstance(exc, JobTimeout):
        return "timeout", str(exc) or "the job ran past its time limit"
    if isinstance(exc, Cancelled):
        return "cancelled", "cancelled on request"
    if (refused := _refused_by_plan(exc)) is not None:
        return refused
    if (full := disk_full(exc, where)) is not None:
        return "disk_full", full.message
    if _is_oom(exc):
        return "out_of_memory", f"out of memory: {exc}. Use a larger device or a smaller calibration set."
    if _is_missing_model(exc):
        return "model_not_found", f"the model could not be found or read: {exc}"
    if isinstance(exc, ValidationError | ValueError):
        return "invalid_recipe", f"the recipe cannot be applied to this model: {exc}"
    return "internal", f"{type(exc).__name__}: {exc}"
