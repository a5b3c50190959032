"""Layer drop: both similarity metrics and the selections against the direct whole-model reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moecomp.compression.adapters import get_adapter
from moecomp.compression.methods.layer_drop import LayerDropConfig, select_similarity
from moecomp.compression.structure import Decisions, apply_decisions
from moecomp.compression.trimming import run_trimming
from tests.compression.reference import layer_similarity, load_full, shakespeare_ids, top


@pytest.fixture(scope="module", params=["tiny-mixtral", "tiny-qwen2-moe"])
def fixture(request: pytest.FixtureRequest, tiny_mixtral_dir: Path, tiny_qwen2_moe_dir: Path):
    model_dir = tiny_mixtral_dir if request.param == "tiny-mixtral" else tiny_qwen2_moe_dir
    ids = shakespeare_ids(model_dir)
    return model_dir, ids, layer_similarity(load_full(model_dir), ids)


def _engine(model_dir: Path, stages: list, ids: torch.Tensor):
    return run_trimming(model_dir, stages, ids, device="cpu", dtype=torch.float32)


def _close(engine: dict[str, float], reference: dict[int, float]) -> None:
    assert {int(k) for k in engine} == set(reference)
    for layer, value in reference.items():
        assert abs(engine[str(layer)] - value) < 1e-4, (layer, engine[str(layer)], value)


def test_both_metrics_and_selection_match_reference(fixture) -> None:
    model_dir, ids, reference = fixture
    decisions, reports = _engine(model_dir, [LayerDropConfig(drop=3)], ids)
    for metric in ("residual", "moe_only"):
        _close(reports[0]["similarity_by_metric"][metric], reference[metric])
        engine = {int(k): v for k, v in reports[0]["similarity_by_metric"][metric].items()}
        assert select_similarity(engine, 3) == top(reference[metric], 3)
    _close(reports[0]["similarity"], reference["residual"])
    assert decisions == Decisions(dropped_layers=top(reference["residual"], 3))


def test_iterative_drops_one_at_a_time_on_the_trimmed_model(fixture) -> None:
    model_dir, ids, reference = fixture
    decisions, reports = _engine(model_dir, [LayerDropConfig(drop=2, iterative=True, metric="moe_only")], ids)
    model = load_full(model_dir)
    layout = get_adapter(model.config).layout
    expected: list[int] = []
    for round_ in range(2):
        similarity = layer_similarity(model, ids)["moe_only"]
        _close(reports[0]["rounds"][round_]["similarity"], similarity)
        chosen = top(similarity, 1)
        expected += chosen
        apply_decisions(model, Decisions(dropped_layers=chosen), layout)
    assert decisions.dropped_layers == sorted(expected)
    _close(reports[0]["similarity"], reference["moe_only"])  # the first round saw the unmodified model


def test_dense_layers_are_never_candidates(tmp_path: Path) -> None:
    from tests.compression.tiny_moe import tiny_model

    model = tiny_model("qwen2_moe")  # layer 1 is dense
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    decisions, reports = _engine(tmp_path, [LayerDropConfig(drop=2)], ids)
    assert set(reports[0]["similarity"]) == {"0", "2", "3"}
    assert 1 not in decisions.dropped_layers
    with pytest.raises(ValueError, match=r"layer_drop\.drop=3 must be below the number of candidate MoE layers \(3\)"):
        _engine(tmp_path, [LayerDropConfig(drop=3)], ids)
