"""Run a recipe's trimming stages with the streaming engine; combine their decisions.

Stage k is scored on the model with the decisions of stages 1..k-1 applied (so expert drop after
layer drop scores the layer-dropped model), and every index is reported in the ORIGINAL numbering.
A stage runs one pass, or ``drop`` passes when layer/block drop is iterative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moecomp.compression.context import RunContext
from moecomp.compression.engine import calibrate
from moecomp.compression.lazy_checkpoint import SafetensorsSource, WeightSource
from moecomp.compression.methods.base import StageConfig
from moecomp.compression.observers import Observer, SelectContext
from moecomp.compression.structure import Decisions


def run_trimming(
    model_dir: Path | None,
    stages: list[StageConfig],
    calib_ids: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    ctx: RunContext | None = None,
    micro_batch: int | None = None,
    source: WeightSource | None = None,
    prior: Decisions | None = None,
) -> tuple[Decisions, list[dict[str, Any]]]:
    """Score and select every trimming stage in order; returns (combined decisions, per-stage reports).

    ``source`` replaces reading ``model_dir`` (benchmarks generate weights); ``prior`` are decisions
    already taken before these stages. Each report: {"method", "config", "scores" | "similarity",
    "decisions"} in original numbering, plus "rounds" for iterative layer/block drop.
    """
    ctx = ctx or RunContext()
    source = source or SafetensorsSource(Path(model_dir))  # type: ignore[arg-type]
    decisions = prior or Decisions()
    reports = []
    for stage in stages:
        stage_decisions, stage_report = run_stage(source, stage, calib_ids, decisions, device, dtype, ctx, micro_batch)
        decisions = decisions.merge(stage_decisions)
        reports.append(stage_report)
    return decisions, reports


def run_stage(
    source: WeightSource,
    stage: StageConfig,
    calib_ids: torch.Tensor,
    prior: Decisions,
    device: str | torch.device,
    dtype: torch.dtype,
    ctx: RunContext,
    micro_batch: int | None,
) -> tuple[Decisions, dict[str, Any]]:
    """All passes of one stage; each round sees the previous rounds' decisions applied."""
    method = stage.method
    trimmer = stage.trimmer()
    taken = Decisions()
    round_reports = []
    n_rounds = trimmer.rounds(stage)
    for round_ in range(n_rounds):
        sctx = SelectContext(family=source.family, config=source.config, prior=prior.merge(taken))
        observer: Observer = trimmer.observer(stage, sctx)
        name = method if n_rounds == 1 else f"{method} (round {round_ + 1}/{n_rounds})"
        result = calibrate(
            source, calib_ids, [observer], prior=sctx.prior, device=device, dtype=dtype,
            ctx=ctx, stage=name, micro_batch=micro_batch,
        )  # fmt: skip
        chosen = result.decisions.merge(trimmer.select(observer, stage, sctx, round_))
        taken = taken.merge(chosen)
        round_reports.append({**trimmer.report(observer, sctx), "decisions": chosen.to_json()})
    report: dict[str, Any] = {"method": method, "config": stage.model_dump(mode="json"), **round_reports[0]}
    report["decisions"] = taken.to_json()
    if n_rounds > 1:
        report["rounds"] = round_reports
    ctx.message(method, f"{method}: {_summary(taken)}")
    return taken, report


def _summary(decisions: Decisions) -> str:
    parts = []
    if decisions.kept_experts:
        parts.append(f"experts kept in {len(decisions.kept_experts)} layers")
    if decisions.dropped_layers:
        parts.append(f"MoE sub-layers dropped {decisions.dropped_layers}")
    if decisions.dropped_blocks:
        parts.append(f"blocks dropped {decisions.dropped_blocks}")
    return "; ".join(parts) or "nothing removed"
