"""The job body: resolve the model, compress, evaluate, check the gate. Library calls only.

It knows nothing of Celery; it reads the job's stored request and returns what it produced, for the
lifecycle (lifecycle.py) to turn into artifacts and a final status.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from moecomp.compression.evaluation.spec import EvaluationSpec
from moecomp.compression.recipe import Recipe
from moecomp.persistence.models import Job, Upload
from moecomp.settings import Settings
from moecomp.worker.errors import JobError
from moecomp.worker.model_card import write_model_card
from moecomp.worker.reporter import JobReporter


@dataclass(frozen=True)
class JobInput:
    model: str | Path  # a local folder or a hub id
    revision: str | None
    recipe: Recipe
    evaluation: EvaluationSpec | None


@dataclass
class JobOutput:
    checkpoint: Path
    manifest: dict[str, Any]
    report_files: list[Path] = field(default_factory=list)
    report: dict[str, Any] | None = None
    gate_failures: list[str] = field(default_factory=list)


def _library(name: str) -> ModuleType:
    """The library module, or the temporary stand-ins while it has not landed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not name.startswith(exc.name):
            raise  # the module exists but one of its own imports is missing: a real error
        return importlib.import_module("moecomp.worker.fallback")


LIBRARY_MODULES = (
    "moecomp.compression.pipeline",
    "moecomp.compression.evaluation.run",
    "moecomp.compression.evaluation.report",
    "moecomp.compression.evaluation.gate",
)


def preload() -> None:
    """Import torch, transformers and the library once in the worker's main process, before the pool
    forks, so that each job starts at once instead of spending seconds on imports."""
    for name in LIBRARY_MODULES:
        _library(name)


def resolve_model(job: Job, upload: Upload | None, settings: Settings) -> tuple[str | Path, str | None]:
    """The model reference compress() takes, from the job's stored ModelSource."""
    source = job.model_source
    kind = source.get("kind")
    if kind == "local":
        path = Path(source["path"])
        if not (path / "config.json").is_file():
            raise JobError("model_not_found", f"no config.json under the local model folder {path}")
        return path, None
    if kind == "hub":
        return source["id"], source.get("revision") or None
    if kind == "upload":
        if upload is None:
            raise JobError("model_not_found", f"upload {source.get('upload_id')} no longer exists")
        return settings.uploads_dir / upload.relpath, None
    raise JobError("invalid_recipe", f"unknown model source kind {kind!r}")


def parse_input(job: Job, upload: Upload | None, settings: Settings) -> JobInput:
    model, revision = resolve_model(job, upload, settings)
    try:
        recipe = Recipe.model_validate(job.recipe)
        evaluation = EvaluationSpec.model_validate(job.evaluation or {})
    except ValidationError as exc:
        raise JobError("invalid_recipe", f"the stored request no longer validates: {exc}") from exc
    return JobInput(model, revision, recipe, evaluation)


def _local_dir(model: str | Path, revision: str | None) -> Path | None:
    """The folder the original model was read from (the hub cache for hub ids), for the baseline."""
    if isinstance(model, Path):
        return model
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # compress() read it, so this is rare; the report then has no baseline
        return None


def run_body(inp: JobInput, workdir: Path, reporter: JobReporter, device: str, cache_dir: Path) -> JobOutput:
    """Compress into ``workdir/checkpoint``, then evaluate it reloaded from disk."""
    ctx = reporter.context()
    compress_end = 0.7 if inp.evaluation is not None else 0.9
    reporter.begin_phase(0.0, compress_end, len(inp.recipe.stages) + 3)  # load, calibrate, stages, export
    pipeline = _library("moecomp.compression.pipeline")
    checkpoint = workdir / "checkpoint"
    manifest = pipeline.compress(inp.model, inp.recipe, checkpoint, revision=inp.revision, device=device, ctx=ctx)
    out = JobOutput(checkpoint=checkpoint, manifest=manifest)
    if inp.evaluation is not None:
        ctx.check_cancelled()
        reporter.begin_phase(compress_end, 0.9, 1)  # evaluate() reports one stage, step by step
        _evaluate(inp, out, workdir, reporter, device, cache_dir)
    write_model_card(checkpoint, inp.model, inp.revision, inp.recipe, out.report)
    return out


def _evaluate(inp: JobInput, out: JobOutput, workdir: Path, reporter: JobReporter, device: str, cache: Path) -> None:
    assert inp.evaluation is not None
    run = _library("moecomp.compression.evaluation.run")
    report_mod = _library("moecomp.compression.evaluation.report")
    gate_mod = _library("moecomp.compression.evaluation.gate")
    baseline = _local_dir(inp.model, inp.revision)
    ctx = reporter.context()
    out.report = run.evaluate(
        out.checkpoint, baseline, inp.evaluation, device=device, ctx=ctx, cache_dir=cache, manifest=out.manifest
    )
    out.report_files = list(report_mod.write_report(out.report, workdir / "report"))
    out.gate_failures = list(gate_mod.check_gate(out.report, inp.evaluation.gate))
