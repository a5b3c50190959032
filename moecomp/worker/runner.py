"""The job body: resolve the model, compress, evaluate, check the gate. Library calls only.

It knows nothing of Celery; it reads the job's stored request and returns what it produced, for the
lifecycle (lifecycle.py) to turn into artifacts and a final status.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moecomp.compression.context import Cancelled
from moecomp.compression.evaluation.gate import check_gate
from moecomp.compression.evaluation.report import write_report
from moecomp.compression.evaluation.run import evaluate
from moecomp.compression.evaluation.spec import EvaluationSpec
from moecomp.compression.model_card import write_model_card
from moecomp.compression.pipeline import compress
from moecomp.compression.planning import check, plan
from moecomp.compression.recipe import Recipe
from moecomp.compression.sources import remote_code_config, resolve_model
from moecomp.persistence.models import Job, Upload
from moecomp.settings import Settings
from moecomp.worker.errors import JobError, JobTimeout, LeaseLost, classify, disk_full
from moecomp.worker.reporter import JobReporter

log = logging.getLogger(__name__)


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
    evaluation_error: str | None = None  # "code: message" of an evaluation that failed after the export


def model_reference(
    job: Job, upload: Upload | None, settings: Settings, upload_folder: Path | None = None
) -> tuple[str | Path, str | None]:
    """The model reference compress() takes, from the job's stored ModelSource; an upload is read from
    ``upload_folder`` where the worker fetched it (stores.py), else from the shared uploads folder."""
    source = job.model_source
    kind = source.get("kind")
    if kind == "hub":  # hub downloads fetch no code (sources.HUB_ALLOW_PATTERNS)
        return source["id"], source.get("revision") or None
    if kind == "local":
        folder = Path(source["path"])
        if not (folder / "config.json").is_file():
            raise JobError("model_not_found", f"no config.json under the local model folder {folder}")
    elif kind == "upload":
        if upload is None:
            raise JobError("model_not_found", f"upload {source.get('upload_id')} no longer exists")
        folder = upload_folder or settings.uploads_dir / upload.relpath
    else:
        raise JobError("invalid_recipe", f"unknown model source kind {kind!r}")
    if not settings.allow_remote_code:
        refuse_remote_code(folder)
    return folder, None


def refuse_remote_code(folder: Path) -> None:
    """Checked again when the job starts: the folder may have changed since the API accepted it."""
    try:
        name = remote_code_config(folder)
    except ValueError as exc:
        raise JobError("invalid_model", f"{folder}: {exc}") from None
    if name is not None:
        message = f"{folder}/{name} asks for remote code (auto_map), which this server does not allow"
        raise JobError("invalid_model", message)


def parse_input(job: Job, upload: Upload | None, settings: Settings, upload_folder: Path | None = None) -> JobInput:
    model, revision = model_reference(job, upload, settings, upload_folder)
    try:
        recipe = Recipe.model_validate(job.recipe)
        evaluation = EvaluationSpec.model_validate(job.evaluation or {})
    except ValidationError as exc:
        raise JobError("invalid_recipe", f"the stored request no longer validates: {exc}") from exc
    return JobInput(model, revision, recipe, evaluation)


def _local_dir(model: str | Path, revision: str | None) -> Path:
    """The folder the original model was read from (the hub cache for hub ids), for the baseline."""
    return resolve_model(model, revision=revision)  # compress() fetched it already: no second download


def run_body(inp: JobInput, workdir: Path, reporter: JobReporter, device: str, cache_dir: Path) -> JobOutput:
    """Compress into ``workdir/checkpoint``, then evaluate it reloaded from disk."""
    ctx = reporter.context()
    checkpoint = workdir / "checkpoint"
    _refuse_what_cannot_fit(inp, checkpoint, reporter, device, cache_dir)
    compress_end = 0.7 if inp.evaluation is not None else 0.9
    reporter.begin_phase(0.0, compress_end, len(inp.recipe.stages) + 3)  # load, calibrate, stages, export
    manifest = compress(
        inp.model, inp.recipe, checkpoint, revision=inp.revision, device=device, ctx=ctx, preflight=False
    )
    out = JobOutput(checkpoint=checkpoint, manifest=manifest)
    if inp.evaluation is not None:
        ctx.check_cancelled()
        reporter.begin_phase(compress_end, 0.9, 1)  # evaluate() reports one stage, step by step
        out.evaluation_error = _evaluate_or_explain(inp, out, workdir, reporter, device, cache_dir)
    if out.report is not None:  # compress() wrote the card; now with the evaluation's figures
        write_model_card(checkpoint, manifest, out.report)
    return out


def _refuse_what_cannot_fit(inp: JobInput, checkpoint: Path, reporter: JobReporter, device: str, cache: Path) -> None:
    """Before any work: the disk (checkpoint, scratch, evaluation cache) and host memory the job needs, or a
    DiskSpaceError / HostMemoryError naming the numbers (errors.classify: disk_full / out_of_memory)."""
    model_dir = resolve_model(inp.model, revision=inp.revision)
    needs = plan(model_dir, inp.recipe, device=device, evaluation=inp.evaluation)
    reporter.message("plan", needs.describe())
    check(needs, checkpoint, cache_dir=cache)


def _evaluate_or_explain(
    inp: JobInput, out: JobOutput, workdir: Path, reporter: JobReporter, device: str, cache: Path
) -> str | None:
    """Evaluate; a failure of the evaluation alone comes back as "code: message" instead of ending the job
    here: the checkpoint is complete, and at real size it cost an hour that a second attempt would repeat.
    A cancel, a timeout, a lost lease or a full disk still end the attempt as they do anywhere else."""
    try:
        _evaluate(inp, out, workdir, reporter, device, cache)
    except (Cancelled, JobTimeout, LeaseLost):
        raise
    except Exception as exc:
        if disk_full(exc, workdir) is not None:
            raise
        reporter.log.append(traceback.format_exc())
        log.exception("the evaluation failed; the checkpoint is kept")
        code, message = classify(exc, workdir)
        return f"{code}: {message}"
    return None


def _evaluate(inp: JobInput, out: JobOutput, workdir: Path, reporter: JobReporter, device: str, cache: Path) -> None:
    assert inp.evaluation is not None
    baseline = _local_dir(inp.model, inp.revision)
    ctx = reporter.context()
    out.report = evaluate(
        out.checkpoint, baseline, inp.evaluation, device=device, ctx=ctx, cache_dir=cache, manifest=out.manifest
    )
    out.report_files = list(write_report(out.report, workdir / "report"))
    out.gate_failures = list(check_gate(out.report, inp.evaluation.gate))
