"""Map what went wrong in a job to an error code a person can act on, and a one-line message."""

from __future__ import annotations

from pydantic import ValidationError

from moecomp.compression.context import Cancelled


class JobError(Exception):
    """An error the runner raises with its code already decided."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobTimeout(Exception):
    """The job passed settings.job_time_limit_s."""


class LeaseLost(Exception):
    """Another attempt owns the job now (the reaper re-queued it); this one must stop without writing."""


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch  # noqa: PLC0415

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


def classify(exc: BaseException) -> tuple[str, str]:
    """(error_code, message) for an exception that ended a job."""
    if isinstance(exc, JobError):
        return exc.code, exc.message
    if isinstance(exc, JobTimeout):
        return "timeout", str(exc) or "the job ran past its time limit"
    if isinstance(exc, Cancelled):
        return "cancelled", "cancelled on request"
    if _is_oom(exc):
        return "out_of_memory", f"out of memory: {exc}. Use a larger device or a smaller calibration set."
    if _is_missing_model(exc):
        return "model_not_found", f"the model could not be found or read: {exc}"
    if isinstance(exc, ValidationError | ValueError):
        return "invalid_recipe", f"the recipe cannot be applied to this model: {exc}"
    return "internal", f"{type(exc).__name__}: {exc}"
