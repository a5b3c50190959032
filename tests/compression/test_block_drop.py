"""Block drop: discrete and consecutive similarities and selections against output_hidden_states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from moecomp.compression.adapters import get_adapter
from moecomp.compression.methods.block_drop import BlockDropConfig
from moecomp.compression.structure import Decisions, apply_decisions
from moecomp.compression.trimming import run_trimming
from tests.compression.reference import block_similarity, block_states, load_full, shakespeare_ids, top


@pytest.fixture(scope="module", params=["tiny-mixtral", "tiny-qwen2-moe"])
def fixture(request: pytest.FixtureRequest, tiny_mixtral_dir: Path, tiny_qwen2_moe_dir: Path):
    model_dir = tiny_mixtral_dir if request.param == "tiny-mixtral" else tiny_qwen2_moe_dir
    ids = shakespeare_ids(model_dir)
    return model_dir, ids, block_states(load_full(model_dir), ids)


def _engine(model_dir: Path, stages: list, ids: torch.Tensor, **kwargs):
    return run_trimming(model_dir, stages, ids, device="cpu", dtype=torch.float32, **kwargs)


def _close(engine: dict[str, float], reference: dict[int, float]) -> None:
    assert {int(k) for k in engine} == set(reference)
    for i, value in reference.items():
        assert abs(engine[str(i)] - value) < 1e-4, (i, engine[str(i)], value)


def test_discrete_matches_reference(fixture) -> None:
    model_dir, ids, states = fixture
    reference = block_similarity(states, 1)
    decisions, reports = _engine(model_dir, [BlockDropConfig(drop=3)], ids, micro_batch=3)
    _close(reports[0]["similarity"], reference)
    assert decisions == Decisions(dropped_blocks=top(reference, 3))


@pytest.mark.parametrize("drop", [1, 3])
def test_consecutive_compares_h_i_with_h_i_plus_drop(fixture, drop: int) -> None:
    model_dir, ids, states = fixture
    reference = block_similarity(states, drop)  # starts 0 .. n - drop: the last window ends at the last block
    assert len(reference) == 8 - drop + 1
    decisions, reports = _engine(model_dir, [BlockDropConfig(drop=drop, mode="consecutive")], ids)
    _close(reports[0]["similarity"], reference)
    best = min(reference, key=lambda i: (-reference[i], i))
    assert decisions.dropped_blocks == list(range(best, best + drop))


def test_iterative_matches_repeated_reference(fixture) -> None:
    model_dir, ids, _ = fixture
    decisions, reports = _engine(model_dir, [BlockDropConfig(drop=2, iterative=True)], ids)
    model = load_full(model_dir)
    layout = get_adapter(model.config).layout
    remaining = list(range(8))
    for round_ in range(2):
        similarity = block_similarity(block_states(model, ids), 1)
        original = {remaining[i]: v for i, v in similarity.items()}
        _close(reports[0]["rounds"][round_]["similarity"], original)
        chosen = top(similarity, 1)
        remaining = [b for i, b in enumerate(remaining) if i not in chosen]
        apply_decisions(model, Decisions(dropped_blocks=chosen), layout)
    assert decisions.dropped_blocks == sorted(set(range(8)) - set(remaining))


def test_validation(tiny_mixtral_dir: Path) -> None:
    ids = shakespeare_ids(tiny_mixtral_dir, n=1, seq_len=16)
    with pytest.raises(ValueError, match=r"block_drop\.drop=8 must be below the number of decoder blocks \(8\)"):
        _engine(tiny_mixtral_dir, [BlockDropConfig(drop=8)], ids)
    with pytest.raises(ValidationError, match="discrete"):
        BlockDropConfig(drop=2, mode="consecutive", iterative=True)
