"""TEMPORARY stand-ins for compress() and evaluate() until the library's entry points land.

Used only when ``moecomp.compression.pipeline`` / ``moecomp.compression.evaluation.run`` cannot be
imported. They do real work for an empty recipe: re-export the model unchanged, and measure
perplexity on held-out text. Delete this module once both entry points exist.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from moecomp.assets import HELDOUT_TEXT
from moecomp.compression.context import RunContext
from moecomp.compression.evaluation.spec import EvaluationSpec
from moecomp.compression.recipe import Recipe
from moecomp.worker.errors import JobError


def compress(
    model: str | Path,
    recipe: Recipe,
    out_dir: Path,
    *,
    revision: str | None = None,
    device: str = "cpu",
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    ctx = ctx or RunContext()
    if recipe.stages:
        raise JobError("invalid_recipe", "this build cannot run compression stages yet (library not installed)")
    ctx.progress("load", 0, 1)
    lm = AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype="auto")
    tok = AutoTokenizer.from_pretrained(model, revision=revision)
    ctx.progress("load", 1, 1)
    ctx.check_cancelled()
    out_dir.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    manifest = {
        "schema": "moecomp.manifest/1",
        "source": {"model": str(model), "revision": revision},
        "recipe": recipe.model_dump(mode="json"),
    }
    (out_dir / "moecomp.json").write_text(json.dumps(manifest, indent=2))
    ctx.progress("export", 1, 1)
    return manifest


def _perplexity(model_dir: Path, spec: EvaluationSpec, device: str, ctx: RunContext, stage: str) -> float:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids: list[int] = []
    for doc in HELDOUT_TEXT.read_text().split("\f"):
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = ids[: spec.max_tokens]
    windows = [ids[i : i + spec.seq_len] for i in range(0, len(ids) - spec.seq_len + 1, spec.seq_len)]
    nll, count = 0.0, 0
    with torch.no_grad():
        for i, window in enumerate(windows, 1):
            ctx.check_cancelled()
            x = torch.tensor([window], device=device)
            nll += lm(x, labels=x).loss.item() * (len(window) - 1)
            count += len(window) - 1
            ctx.progress(stage, i, len(windows))
    return math.exp(nll / count)


def evaluate(
    candidate_dir: Path,
    baseline_dir: Path | None,
    spec: EvaluationSpec,
    *,
    device: str = "cpu",
    ctx: RunContext | None = None,
    cache_dir: Path | None = None,
    manifest: dict | None = None,
) -> dict[str, Any]:
    ctx = ctx or RunContext()
    report: dict[str, Any] = {"candidate": {"perplexity": _perplexity(candidate_dir, spec, device, ctx, "perplexity")}}
    if baseline_dir is not None:
        report["baseline"] = {"perplexity": _perplexity(baseline_dir, spec, device, ctx, "baseline_perplexity")}
    ctx.metrics("evaluate", report)
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    html = out_dir / "report.html"
    html.write_text(f"<html><body><pre>{json.dumps(report, indent=2)}</pre></body></html>")
    return [path, html]


def check_gate(report: dict[str, Any], gate: Any) -> list[str]:
    limit = gate.max_perplexity_increase_pct
    if limit is None or "baseline" not in report:
        return []
    rise = 100 * (report["candidate"]["perplexity"] / report["baseline"]["perplexity"] - 1)
    return [f"perplexity rose {rise:.1f}% (limit {limit}%)"] if rise > limit else []
