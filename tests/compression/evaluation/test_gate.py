from __future__ import annotations

from moecomp.compression.context import RunContext
from moecomp.compression.evaluation.gate import check_gate
from moecomp.compression.evaluation.run import evaluate
from moecomp.compression.evaluation.spec import EvaluationSpec, QualityGate
from tests.compression.evaluation.helpers import copy_model, zero_expert

SPEC = EvaluationSpec(max_tokens=2048, fidelity_tokens=2048, dtype="float32", gate=QualityGate(min_top1_agreement=0.95))


def test_a_corrupted_checkpoint_fails_the_gate_and_its_clean_copy_passes(tiny_mixtral_dir, tmp_path):
    clean = copy_model(tiny_mixtral_dir, tmp_path / "clean")
    corrupt = copy_model(tiny_mixtral_dir, tmp_path / "corrupt")
    zero_expert(corrupt, layer=4, expert=1)
    events: list[tuple] = []
    ctx = RunContext(sink=lambda kind, stage, data: events.append((kind, stage, data)))

    bad = evaluate(corrupt, tiny_mixtral_dir, SPEC, ctx=ctx, cache_dir=tmp_path / "cache")
    events.clear()
    good = evaluate(clean, tiny_mixtral_dir, SPEC, ctx=ctx, cache_dir=tmp_path / "cache")

    assert bad["fidelity"]["top1_agreement"] < 0.95 and bad["fidelity"]["kl_mean"] > 0.005
    failures = check_gate(bad, SPEC.gate)
    assert len(failures) == 1 and "top-1 agreement" in failures[0] and "below the minimum 0.95" in failures[0]
    assert bad["gate"] == {"passed": False, "failures": failures}

    assert good["fidelity"]["top1_agreement"] == 1.0 and good["fidelity"]["kl_mean"] < 1e-6
    assert check_gate(good, SPEC.gate) == [] and good["gate"]["passed"]
    # The second job evaluated the original from the cache without loading it.
    assert set(good["baseline"]["cached"]) == {
        "footprint:footprint",
        "perplexity:bundled:heldout",
        "fidelity:bundled:heldout",
    }
    assert not any(kind == "message" and "baseline" in data["text"] for kind, _, data in events)
    steps = [d for kind, stage, d in events if kind == "progress" and stage == "evaluate"]
    assert [s["step"] for s in steps] == list(range(1, 7)) and all(s["total"] == 6 for s in steps)


def _report(cand_ppl: float, base_ppl: float, cand_acc: float | None, base_acc: float | None, agree: float):
    def result(ppl, acc):
        return {"perplexity": {"bundled:heldout": {"ppl": ppl}}, "mean_accuracy": acc}

    return {
        "candidate": result(cand_ppl, cand_acc),
        "baseline": result(base_ppl, base_acc),
        "fidelity": {"top1_agreement": agree, "kl_mean": 0.1, "tokens": 100},
    }


def test_each_bound_reports_its_figures():
    gate = QualityGate(min_accuracy_pct=95, max_perplexity_increase_pct=10, min_top1_agreement=0.9)
    assert check_gate(_report(21.0, 20.0, 0.58, 0.6, 0.95), gate) == []
    failures = check_gate(_report(23.0, 20.0, 0.5, 0.6, 0.8), gate)
    assert failures == [
        "mean accuracy 0.5000 is 83.3% of the original's 0.6000, below the minimum 95.0%",
        "perplexity on bundled:heldout rose 15.0% (20.000 -> 23.000), above the maximum 10.0%",
        "top-1 agreement with the original 0.8000 is below the minimum 0.9 (mean KL 0.1000 nats over 100 tokens)",
    ]


def test_a_bound_on_an_unmeasured_figure_fails():
    report = _report(20.0, 20.0, None, None, 1.0)
    report["fidelity"] = None
    failures = check_gate(report, QualityGate(min_accuracy_pct=90, min_top1_agreement=0.5))
    assert len(failures) == 2 and "no task accuracy" in failures[0] and "not measured" in failures[1]
    assert check_gate(report, QualityGate()) == []
