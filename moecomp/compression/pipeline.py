"""compress(): the one entry point of the CLI and the worker. Model + recipe -> checkpoint folder + manifest.

The recipe's stages are split into passes of consecutive stages of one kind (each stage's ``pass_kind``): each pass
reads a checkpoint folder and writes one, through the runner :data:`PASS_RUNNERS` names for that kind.
Trimming: one :func:`trimming.run_trimming` call, then :func:`export.export_trimmed`. Slimming: the streamed,
MoE-batched pass :func:`slimming.run.run_streamed`, or plain llm-compressor
(:func:`slimming.llmcompressor_pass.run_slimming`) for FP8 and stages that ask for ``backend:
llmcompressor``. A trimming pass followed by a streamed slimming pass writes nothing: the slimming pass applies
its decisions while it reads (``PassJob.pending``), so ``[layer_drop, gptq]`` writes one checkpoint. Other
intermediate checkpoints live in a temporary folder beside ``out_dir`` and are removed; the last pass writes
``out_dir``. An empty recipe still re-exports the model (a real checkpoint with its manifest).

Indices in the manifest are the ORIGINAL model's: a trimming pass that runs on the output of an
earlier trimming pass has its decisions mapped back through the earlier ones (:func:`to_original`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from moecomp.compression import planning
from moecomp.compression.adapters import get_adapter
from moecomp.compression.context import RunContext
from moecomp.compression.data import load_calibration
from moecomp.compression.dtypes import DTYPES, parse_dtype
from moecomp.compression.export import export_trimmed, source_config
from moecomp.compression.lazy_checkpoint import checkpoint_structure, read_config
from moecomp.compression.manifest import build_manifest, sha256_file, update_manifest, write_manifest
from moecomp.compression.methods.base import StageConfig
from moecomp.compression.model_card import write_model_card
from moecomp.compression.recipe import Recipe
from moecomp.compression.sources import resolve_model
from moecomp.compression.structure import Decisions


@dataclass
class PassJob:
    """One pass: read ``model_dir``, apply ``stages``, write ``out_dir`` (its manifest included)."""

    family: str
    stages: list[StageConfig]
    model_dir: Path
    out_dir: Path
    calib_ids: torch.Tensor | None
    device: str
    dtype: str
    ctx: RunContext
    manifest: dict[str, Any]  # the manifest so far; the runner completes and writes it
    decisions: Decisions = field(default_factory=Decisions)  # original numbering, before this pass
    # Trimming decided by the previous pass but not yet written (``model_dir``'s numbering): a streamed
    # slimming pass applies it while it reads, so [layer_drop, gptq] writes one checkpoint, not two.
    pending: Decisions = field(default_factory=Decisions)
    defer_export: bool = False  # a trimming pass whose decisions the next (streamed slimming) pass applies


@dataclass
class PassResult:
    reports: list[dict[str, Any]]
    decisions: Decisions  # original numbering, after this pass (all passes so far)
    pending: Decisions = field(default_factory=Decisions)  # decided, not yet written (see PassJob.pending)


PassRunner = Callable[[PassJob], PassResult]


def split_passes(stages: list[StageConfig]) -> list[tuple[str, list[StageConfig]]]:
    """Consecutive stages of the same pass kind form one pass; no stage -> one empty trimming pass (re-export)."""
    passes: list[tuple[str, list[StageConfig]]] = []
    for stage in stages:
        family = stage.pass_kind()
        if passes and passes[-1][0] == family:
            passes[-1][1].append(stage)
        else:
            passes.append((family, [stage]))
    return passes or [("trimming", [])]


def torch_dtype(dtype: str, model_dir: Path) -> torch.dtype:
    """``auto`` is the checkpoint's own dtype (bfloat16 when it does not say)."""
    parsed = parse_dtype(dtype)
    if parsed != "auto":
        return parsed
    config = read_config(model_dir)
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return found if isinstance(found, torch.dtype) else DTYPES.get(str(found), torch.bfloat16)


def to_original(later: Decisions, earlier: Decisions, num_layers: int) -> Decisions:
    """Map decisions taken on a checkpoint that ``earlier`` already trimmed back to the original numbering."""
    layers = earlier.kept_blocks(num_layers)  # new index -> original index

    def expert(layer: int, e: int) -> int:
        kept = earlier.kept_experts.get(layer)
        return kept[e] if kept is not None else e

    kept = {layers[i]: [expert(layers[i], e) for e in es] for i, es in later.kept_experts.items()}
    mapped = Decisions(
        kept_experts=kept,
        dropped_layers=[layers[i] for i in later.dropped_layers],
        dropped_blocks=[layers[i] for i in later.dropped_blocks],
    )
    return earlier.merge(mapped)


def _trimming_pass(job: PassJob) -> PassResult:
    decisions, reports = Decisions(), list[dict[str, Any]]()
    if job.stages:
        from moecomp.compression.trimming import run_trimming

        dtype = torch_dtype(job.dtype, job.model_dir)
        assert job.calib_ids is not None
        # A pack-quantized checkpoint is scored on the weights it stands for, dequantized as each layer is read
        # (no dense copy on disk); the export renumbers its packed tensors.
        decisions, reports = run_trimming(
            job.model_dir, job.stages, job.calib_ids, device=job.device, dtype=dtype, ctx=job.ctx
        )
    combined = to_original(decisions, job.decisions, job.manifest["source"]["num_hidden_layers"])
    if job.defer_export:
        return PassResult(reports, combined, pending=decisions)
    manifest = {**job.manifest, "decisions": combined.to_json()}
    export_trimmed(job.model_dir, decisions, job.out_dir, manifest=manifest, ctx=job.ctx)
    return PassResult(reports, combined)


def _streamed_slimming_pass(job: PassJob) -> PassResult:
    from moecomp.compression.slimming.reload_check import checkpoint_bytes
    from moecomp.compression.slimming.run import run_streamed

    _refuse_uneven_experts(job.model_dir, job.pending)
    assert job.calib_ids is not None
    source_dtype = torch_dtype("auto", job.model_dir)
    if job.dtype != "auto":
        compute = save = torch_dtype(job.dtype, job.model_dir)
    else:  # CPU kernels for bf16 matmuls are 10-30x slower than for float32
        compute, save = (source_dtype if job.device.startswith("cuda") else torch.float32), source_dtype
    reports = run_streamed(
        job.model_dir, job.stages, job.calib_ids, job.out_dir,
        prior=job.pending, device=job.device, dtype=compute, save_dtype=save, ctx=job.ctx,
    )  # fmt: skip
    sizes = checkpoint_bytes(job.out_dir, job.model_dir)
    for report in reports:
        report["checkpoint"].update(sizes)
    saved = json.loads((job.out_dir / "config.json").read_text())
    output = {
        "loading": "remote_code" if "auto_map" in saved else "stock",
        "model_type": saved["model_type"],
        "num_hidden_layers": saved["num_hidden_layers"],
    }
    manifest = {**job.manifest, "decisions": job.decisions.to_json(), "output": output}
    _, stored = source_config(job.model_dir)
    if stored is not None:  # gpt-oss's mxfp4 experts: slimmed as the bf16 they were read as
        job.ctx.message(job.stages[0].method, stored.note())
        manifest["notes"] = [*manifest.get("notes", []), stored.note()]
    write_manifest(job.out_dir, manifest)
    return PassResult(reports, job.decisions)


def _refuse_uneven_experts(model_dir: Path, pending: Decisions) -> None:
    config = read_config(model_dir)
    counts = {len(kept) for kept in pending.kept_experts.values()}
    if checkpoint_structure(config, get_adapter(config)).kept_experts or len(counts) > 1:
        # transformers dequantizes fused experts at load with one shape for every layer.
        raise ValueError(
            "slimming after an expert_drop that left MoE layers with different expert counts is not supported "
            "yet; put the slimming stages first, or use expert_drop mode 'layerwise'"
        )


def _llmcompressor_slimming_pass(job: PassJob) -> PassResult:
    from moecomp.compression.slimming.llmcompressor_pass import run_slimming

    config = read_config(job.model_dir)
    if checkpoint_structure(config, get_adapter(config)).kept_experts:
        # llm-compressor splits fused experts into linears by the config's expert count, one for every layer.
        raise ValueError(
            "slimming after an expert_drop that left MoE layers with different expert counts is not supported "
            "yet; put the slimming stages first, or use expert_drop mode 'layerwise'"
        )
    assert job.calib_ids is not None
    reports = run_slimming(
        job.model_dir, job.stages, job.calib_ids, job.out_dir, device=job.device, ctx=job.ctx, dtype=job.dtype
    )
    # After layer_drop or an uneven expert_drop the checkpoint keeps the modeling code it was trimmed with.
    saved = json.loads((job.out_dir / "config.json").read_text())
    output = {"loading": "remote_code" if "auto_map" in saved else "stock", "model_type": saved["model_type"]}
    write_manifest(job.out_dir, {**job.manifest, "decisions": job.decisions.to_json(), "output": output})
    return PassResult(reports, job.decisions)


# stage.family -> the runner of a pass of such stages. A new family registers here, nowhere else.
PASS_RUNNERS: dict[str, PassRunner] = {
    "trimming": _trimming_pass,
    "slimming": _streamed_slimming_pass,
    "slimming_llmcompressor": _llmcompressor_slimming_pass,
}


def _calibration(recipe: Recipe, model_dir: Path, ctx: RunContext) -> torch.Tensor | None:
    if not recipe.stages:
        return None  # a plain re-export needs no data
    ctx.progress("calibrate", 0, 1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = load_calibration(recipe.calibration, tokenizer)
    ctx.progress("calibrate", 1, 1, samples=int(ids.shape[0]), seq_len=int(ids.shape[1]))
    return ids


def _source_info(model: str | Path, revision: str | None, model_dir: Path) -> dict[str, Any]:
    config = AutoConfig.from_pretrained(model_dir)
    return {
        "model": str(model),
        "revision": revision,
        "path": str(model_dir),
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "config_sha256": sha256_file(model_dir / "config.json"),
    }


def _prepare_out(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"output folder {out_dir} exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir


def compress(
    model: str | Path,
    recipe: Recipe,
    out_dir: Path,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    ctx: RunContext | None = None,
    preflight: bool = True,
) -> dict[str, Any]:
    """Compress ``model`` (local folder or hub id) with ``recipe`` into ``out_dir``; return the manifest written.

    ``preflight``: refuse at once (DiskSpaceError, HostMemoryError) a job whose output, scratch or host memory
    cannot fit (:mod:`planning`); a caller that checked a larger plan already passes False.
    On any failure (cancellation included) nothing is left behind: neither scratch nor a partial ``out_dir``.
    """
    ctx = ctx or RunContext()
    out_dir = _prepare_out(out_dir)
    created = not out_dir.exists()
    try:
        return _compress(model, recipe, out_dir, revision, device, dtype, ctx, preflight)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        else:  # an empty folder the caller made: empty it again
            for child in out_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _compress(
    model: str | Path, recipe: Recipe, out_dir: Path, revision: str | None, device: str, dtype: str, ctx: RunContext,
    preflight: bool,
) -> dict[str, Any]:  # fmt: skip
    started = time.perf_counter()
    ctx.progress("load", 0, 1)
    model_dir = resolve_model(model, revision=revision, ctx=ctx)
    torch_dtype(dtype, model_dir)  # refuse an unknown dtype before any work
    refuse_methods(model_dir, list(recipe.stages))
    if preflight:
        needs = planning.plan(model_dir, recipe, device=device, dtype=dtype)
        ctx.message("plan", needs.describe())
        planning.check(needs, out_dir)
    source = _source_info(model, revision, model_dir)
    ctx.progress("load", 1, 1)
    timings: dict[str, Any] = {"load": round(time.perf_counter() - started, 3)}
    mark = time.perf_counter()
    calib_ids = _calibration(recipe, model_dir, ctx)
    timings["calibration_data"] = round(time.perf_counter() - mark, 3)
    with tempfile.TemporaryDirectory(prefix=".moecomp-", dir=out_dir.parent) as scratch:
        reports = run_passes(recipe, model_dir, out_dir, Path(scratch), source, calib_ids, device, dtype, ctx, timings)
    timings["total"] = round(time.perf_counter() - started, 3)
    # The last pass wrote the manifest before its own reports and times existed: complete them.
    manifest = update_manifest(out_dir, stages=reports, timings=timings)
    write_model_card(out_dir, manifest)
    ctx.metrics("compress", {"seconds": timings["total"], "loading": manifest["output"]["loading"]})
    return manifest


def run_passes(
    recipe: Recipe, model_dir: Path, out_dir: Path, scratch: Path, source: dict[str, Any],
    calib_ids: torch.Tensor | None, device: str, dtype: str, ctx: RunContext, timings: dict[str, Any],
) -> list[dict[str, Any]]:  # fmt: skip
    """Run the passes in order, each on the previous output, the last into ``out_dir``; return stage reports."""
    passes = split_passes(list(recipe.stages))
    decisions, pending, reports = Decisions(), Decisions(), list[dict[str, Any]]()
    timings["passes"] = []
    current = model_dir
    for i, (family, stages) in enumerate(passes):
        ctx.check_cancelled()
        last = i == len(passes) - 1
        target = out_dir if last else scratch / f"pass-{i}"
        base = build_manifest(
            recipe=recipe.model_dump(mode="json"), source=source, stages=reports, decisions={}, timings=timings
        )
        defer = family == "trimming" and bool(stages) and not last and passes[i + 1][0] == "slimming"
        job = PassJob(family, stages, current, target, calib_ids, device, dtype, ctx, base, decisions, pending, defer)
        mark = time.perf_counter()
        result = PASS_RUNNERS[family](job)
        timings["passes"].append(_pass_timing(family, stages, time.perf_counter() - mark, device))
        reports = reports + [{**r, "pass": i} for r in result.reports]
        decisions, pending = result.decisions, result.pending
        current = current if defer else target
    return reports


def refuse_methods(model_dir: Path, stages: list[StageConfig]) -> None:
    """Refuse, before any work, a stage the model's family cannot run (the family's ``refused`` reasons), or a
    checkpoint stored in a quantization the family refuses (``refused_quantizations``)."""
    config = read_config(model_dir)
    family = get_adapter(config)
    family.check_checkpoint(config)
    family.check_methods(stages)


def _pass_timing(family: str, stages: list[StageConfig], seconds: float, device: str) -> dict[str, Any]:
    """Wall time of a pass and, on CUDA, its peak device memory (then reset for the next pass)."""
    timing = {"family": family, "methods": [s.method for s in stages], "seconds": round(seconds, 3)}
    if device.startswith("cuda") and torch.cuda.is_available():
        timing["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    return timing
