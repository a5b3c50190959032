"""evaluate(): measure a compressed checkpoint and its original in one process on the same data.

Order: the original first (only what the cache lacks; its model is loaded only then), keeping its
fidelity reference; then the candidate, loaded from disk as a user would load it. One model is on
the device at a time, so evaluating needs the memory of the larger model, not of both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moecomp.compression.context import RunContext
from moecomp.compression.evaluation.cache import ResultCache
from moecomp.compression.evaluation.compare import percent_of_original, speedups
from moecomp.compression.evaluation.gate import check_gate
from moecomp.compression.evaluation.loading import model_identity, resolve_device
from moecomp.compression.evaluation.measure import STAGE, Measurer, Progress, plan
from moecomp.compression.evaluation.schema import SCHEMA_VERSION, Report
from moecomp.compression.evaluation.spec import EvaluationSpec
from moecomp.compression.manifest import read_manifest


def _measure(m: Measurer, steps: list[tuple[str, str]], progress: Progress, reference=None) -> dict[str, Any]:
    """Run ``steps`` on one model; the result dict follows schema.ModelResult (plus 'fidelity'/'_reference')."""
    out: dict[str, Any] = {"path": str(m.path), "identity": m.identity, "perplexity": {}, "tasks": {}}
    try:
        for kind, name in steps:
            m.ctx.check_cancelled()
            if kind == "footprint":
                out["footprint"] = m.footprint()
            elif kind == "perplexity":
                out["perplexity"][name] = m.perplexity(name)
            elif kind == "fidelity" and reference is None:
                out["_reference"] = m.fidelity_reference(name)
            elif kind == "fidelity":
                out["fidelity"] = m.fidelity(name, *reference)
            elif kind == "task":
                out["tasks"][name] = m.task(name)
            elif kind == "speed":
                out["speed"] = m.speed()
            progress.step(m.role, kind, name)
    finally:
        m.close()
    accs = [t["acc"] for t in out["tasks"].values()]
    out["mean_accuracy"] = sum(accs) / len(accs) if accs else None
    out["runtime"], out["cached"] = m.runtime, m.cached
    return out


def evaluate(
    candidate_dir: Path,
    baseline_dir: Path | None,
    spec: EvaluationSpec,
    *,
    device: str = "cpu",
    ctx: RunContext | None = None,
    cache_dir: Path | None = None,
    manifest: dict | None = None,
) -> dict:
    """Measure ``candidate_dir`` (and ``baseline_dir``, the original) per ``spec``; a report dict (schema.Report)."""
    ctx = ctx or RunContext()
    device = resolve_device(device)
    candidate_dir = Path(candidate_dir)
    base_steps = plan(spec, with_fidelity=True) if baseline_dir is not None else []
    cand_steps = plan(spec, with_fidelity=baseline_dir is not None)
    progress = Progress(ctx, total=len(base_steps) + len(cand_steps))
    notes: list[str] = []

    baseline = reference = None
    if baseline_dir is not None:
        bm = Measurer(
            Path(baseline_dir), "baseline", spec, device, model_identity(baseline_dir), ResultCache(cache_dir), ctx
        )
        baseline = _measure(bm, base_steps, progress)
        reference = baseline.pop("_reference", None)
        notes += bm.notes
    # The candidate is never cached: each job's checkpoint is new.
    cm = Measurer(candidate_dir, "candidate", spec, device, model_identity(candidate_dir), ResultCache(None), ctx)
    candidate = _measure(cm, cand_steps, progress, reference=reference)
    fidelity = candidate.pop("fidelity", None)
    notes += cm.notes + _speed_notes(spec, candidate, baseline)

    report: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": spec.model_dump(mode="json"),
        "device": device,
        "candidate": candidate,
        "baseline": baseline,
        "fidelity": fidelity,
        "relative": percent_of_original(candidate, baseline) if baseline else {},
        "speedup": speedups(candidate, baseline) if baseline else {},
        "manifest": manifest if manifest is not None else read_manifest(candidate_dir),
        "notes": sorted(set(notes), key=notes.index),
    }
    failures = check_gate(report, spec.gate)
    report["gate"] = {"passed": not failures, "failures": failures}
    report = Report.model_validate(report).model_dump(mode="json", by_alias=True)
    ctx.metrics(STAGE, summary(report))
    return report


def _speed_notes(spec: EvaluationSpec, candidate: dict[str, Any], baseline: dict[str, Any] | None) -> list[str]:
    notes = []
    if (candidate.get("speed") or {}).get("peak_memory_gib", 0) is None:
        notes.append(
            "peak memory is not measured on a CPU (torch has no peak counter there): rss_gib is the resident memory"
            " of the whole process, which held both models, so it is not a figure of either"
        )
    served = (candidate.get("speed") or {}).get("served")
    if served and not served.get("compiled"):
        notes.append(
            "the served runtime on a CPU runs the static KV cache without compile or CUDA graph (there are none),"
            " so its figures there say little about serving; on CUDA the decode step is captured in a CUDA graph"
        )
    if spec.speed and baseline and "speed:speed" in baseline["cached"]:
        notes.append("the original's speed comes from the cache (speed_settings.reuse_cached_baseline), not this run")
    return notes


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a report, for a 'metrics' event and the dashboard."""
    cand, rel = report["candidate"], report["relative"]
    out: dict[str, Any] = {"mean_accuracy": cand.get("mean_accuracy"), "gate_passed": report["gate"]["passed"]}
    for source, p in cand["perplexity"].items():
        out[f"ppl:{source}"] = p["ppl"]
    if report.get("fidelity"):
        out["kl_mean"] = report["fidelity"]["kl_mean"]
        out["top1_agreement"] = report["fidelity"]["top1_agreement"]
    if cand.get("speed"):
        out["prefill_tok_s"], out["decode_tok_s"] = cand["speed"]["prefill_tok_s"], cand["speed"]["decode_tok_s"]
    if (cand.get("speed") or {}).get("served"):
        served = cand["speed"]["served"]
        out["served_prefill_tok_s"], out["served_decode_tok_s"] = served["prefill_tok_s"], served["decode_tok_s"]
    for pair, ratios in (report.get("speedup") or {}).items():
        out[f"speedup:{pair}:decode"] = ratios.get("decode")
    for key in ("speed.prefill_tok_s", "speed.decode_tok_s", "footprint.disk_bytes", "mean_accuracy"):
        if key in rel:
            out[f"pct_of_original:{key}"] = rel[key]
    return out
