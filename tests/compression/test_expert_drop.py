"""Expert drop: engine scores and selections against the direct whole-model reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from moecomp.compression.adapters import get_adapter
from moecomp.compression.methods.block_drop import BlockDropConfig
from moecomp.compression.methods.expert_drop import ExpertDropConfig
from moecomp.compression.methods.layer_drop import LayerDropConfig
from moecomp.compression.structure import Decisions, apply_decisions
from moecomp.compression.trimming import run_trimming
from tests.compression.reference import load_full, router_means, shakespeare_ids

KEEP = {"tiny-mixtral": 6, "tiny-qwen2-moe": 9}  # top-2 of 8, top-4 of 16


@pytest.fixture(scope="module", params=["tiny-mixtral", "tiny-qwen2-moe"])
def fixture(request: pytest.FixtureRequest, tiny_mixtral_dir: Path, tiny_qwen2_moe_dir: Path):
    model_dir = tiny_mixtral_dir if request.param == "tiny-mixtral" else tiny_qwen2_moe_dir
    ids = shakespeare_ids(model_dir)
    model = load_full(model_dir)
    return request.param, model_dir, ids, model, router_means(model, ids)


def _engine(model_dir: Path, stages: list, ids: torch.Tensor):
    return run_trimming(model_dir, stages, ids, device="cpu", dtype=torch.float32)


def _assert_scores(report: dict, reference: dict[int, list[float]]) -> None:
    engine = {int(k): v for k, v in report["scores"].items()}
    assert set(engine) == set(reference)
    for layer, ref in reference.items():
        torch.testing.assert_close(torch.tensor(engine[layer]), torch.tensor(ref), rtol=0, atol=1e-4)


def _layerwise(reference: dict[int, list[float]], keep: int) -> dict[int, list[int]]:
    return {i: sorted(sorted(range(len(s)), key=lambda e: (-s[e], e))[:keep]) for i, s in reference.items()}


def test_layerwise_matches_reference(fixture) -> None:
    name, model_dir, ids, _, reference = fixture
    decisions, reports = _engine(model_dir, [ExpertDropConfig(keep=KEEP[name])], ids)
    _assert_scores(reports[0], reference)
    assert decisions.kept_experts == _layerwise(reference, KEEP[name])
    assert reports[0]["decisions"] == decisions.to_json()


def test_global_matches_reference_rule(fixture) -> None:
    name, model_dir, ids, model, reference = fixture
    keep, top_k = KEEP[name] - 1, model.config.num_experts_per_tok
    decisions, reports = _engine(model_dir, [ExpertDropConfig(keep=keep, mode="global")], ids)
    _assert_scores(reports[0], reference)
    # Reference: greedily take experts by score, except that each layer's top_k come first.
    floor = {(i, e) for i, kept in _layerwise(reference, top_k).items() for e in kept}
    ranked = sorted(((-s[e], i, e) for i, s in reference.items() for e in range(len(s))))
    chosen = set(floor)
    for _, i, e in ranked:
        if len(chosen) == keep * len(reference):
            break
        chosen.add((i, e))
    n_experts = len(next(iter(reference.values())))
    expected = {i: sorted(e for j, e in chosen if j == i) for i in reference}
    expected = {i: v for i, v in expected.items() if len(v) < n_experts}
    assert decisions.kept_experts == expected
    assert all(len(v) >= top_k for v in decisions.kept_experts.values())
    kept_total = sum(len(decisions.kept_experts.get(i, range(n_experts))) for i in reference)
    assert kept_total == keep * len(reference)


def test_iterative_rescores_each_layer_on_the_trimmed_model(fixture) -> None:
    name, model_dir, ids, model, _ = fixture
    keep = KEEP[name]
    decisions, reports = _engine(model_dir, [ExpertDropConfig(keep=keep, iterative=True)], ids)
    family = get_adapter(model.config)
    trimmed = load_full(model_dir)
    expected: dict[int, list[int]] = {}
    for layer in family.moe_layers(model.config):
        scores = router_means(trimmed, ids)[layer]
        torch.testing.assert_close(
            torch.tensor(reports[0]["scores"][str(layer)]), torch.tensor(scores), atol=1e-4, rtol=0
        )
        expected[layer] = sorted(sorted(range(len(scores)), key=lambda e: (-scores[e], e))[:keep])
        apply_decisions(trimmed, Decisions(kept_experts={layer: expected[layer]}), family.layout)
    assert decisions.kept_experts == expected


def test_after_layer_drop_scores_the_layer_dropped_model(fixture) -> None:
    name, model_dir, ids, model, _ = fixture
    decisions, reports = _engine(model_dir, [LayerDropConfig(drop=2), ExpertDropConfig(keep=KEEP[name])], ids)
    dropped = reports[0]["decisions"]["dropped_layers"]
    assert decisions.dropped_layers == dropped and len(dropped) == 2
    trimmed = load_full(model_dir)
    apply_decisions(trimmed, Decisions(dropped_layers=dropped), get_adapter(trimmed.config).layout)
    reference = router_means(trimmed, ids)  # same numbering: layer drop does not renumber
    assert not set(reference) & set(dropped)
    _assert_scores(reports[1], reference)
    assert decisions.kept_experts == _layerwise(reference, KEEP[name])


def test_after_block_drop_reports_original_numbering(fixture) -> None:
    name, model_dir, ids, _, _ = fixture
    decisions, reports = _engine(model_dir, [BlockDropConfig(drop=2), ExpertDropConfig(keep=KEEP[name])], ids)
    blocks = decisions.dropped_blocks
    trimmed = load_full(model_dir)
    apply_decisions(trimmed, Decisions(dropped_blocks=blocks), get_adapter(trimmed.config).layout)
    kept_blocks = decisions.kept_blocks(8)
    reference = {kept_blocks[i]: v for i, v in router_means(trimmed, ids).items()}  # back to original indices
    _assert_scores(reports[1], reference)
    assert decisions.kept_experts == _layerwise(reference, KEEP[name])


def test_keep_is_validated(tiny_mixtral_dir: Path) -> None:
    ids = shakespeare_ids(tiny_mixtral_dir, n=1, seq_len=32)
    with pytest.raises(ValueError, match=r"expert_drop\.keep=1 .*top-k \(2\)"):
        _engine(tiny_mixtral_dir, [ExpertDropConfig(keep=1)], ids)
    with pytest.raises(ValueError, match=r"expert_drop\.keep=8 must be below"):
        _engine(tiny_mixtral_dir, [ExpertDropConfig(keep=8)], ids)
    with pytest.raises(ValidationError, match="layerwise"):
        ExpertDropConfig(keep=4, mode="global", iterative=True)
