"""The quality gate: a compressed checkpoint passes only if it keeps enough of the original's quality.

accuracy:    100 * mean_acc(candidate) / mean_acc(original) >= min_accuracy_pct
perplexity:  100 * (ppl(candidate) / ppl(original) - 1) <= max_perplexity_increase_pct   (every source)
fidelity:    top-1 agreement with the original >= min_top1_agreement
A bound that asks for a figure the report lacks fails, saying what is missing: a gate is never
passed by not measuring.
"""

from __future__ import annotations

from typing import Any

from moecomp.compression.evaluation.spec import QualityGate


def _accuracy(report: dict[str, Any], minimum: float) -> list[str]:
    cand, base = report["candidate"].get("mean_accuracy"), (report.get("baseline") or {}).get("mean_accuracy")
    if cand is None or base is None:
        return [f"min_accuracy_pct={minimum}: no task accuracy measured for both the candidate and the original"]
    if base == 0:
        return [f"min_accuracy_pct={minimum}: the original's mean accuracy is 0"]
    pct = 100 * cand / base
    if pct < minimum:
        return [f"mean accuracy {cand:.4f} is {pct:.1f}% of the original's {base:.4f}, below the minimum {minimum}%"]
    return []


def _perplexity(report: dict[str, Any], maximum: float) -> list[str]:
    cand, base = report["candidate"].get("perplexity") or {}, (report.get("baseline") or {}).get("perplexity") or {}
    sources = [s for s in cand if s in base]
    if not sources:
        return [
            f"max_perplexity_increase_pct={maximum}: no perplexity measured for both the candidate and the original"
        ]
    failures = []
    for source in sources:
        c, b = cand[source]["ppl"], base[source]["ppl"]
        rise = 100 * (c / b - 1)
        if rise > maximum:
            failures.append(
                f"perplexity on {source} rose {rise:.1f}% ({b:.3f} -> {c:.3f}), above the maximum {maximum}%"
            )
    return failures


def _agreement(report: dict[str, Any], minimum: float) -> list[str]:
    fidelity = report.get("fidelity")
    if not fidelity:
        return [f"min_top1_agreement={minimum}: fidelity to the original was not measured"]
    agreement = fidelity["top1_agreement"]
    if agreement < minimum:
        return [
            f"top-1 agreement with the original {agreement:.4f} is below the minimum {minimum}"
            f" (mean KL {fidelity['kl_mean']:.4f} nats over {fidelity['tokens']} tokens)"
        ]
    return []


def check_gate(report: dict[str, Any], gate: QualityGate) -> list[str]:
    """Failure messages (with the figures) of ``report`` against ``gate``; [] means it passes."""
    failures: list[str] = []
    if gate.min_accuracy_pct is not None:
        failures += _accuracy(report, gate.min_accuracy_pct)
    if gate.max_perplexity_increase_pct is not None:
        failures += _perplexity(report, gate.max_perplexity_increase_pct)
    if gate.min_top1_agreement is not None:
        failures += _agreement(report, gate.min_top1_agreement)
    return failures
