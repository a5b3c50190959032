"""The streaming engine: lazy per-layer loading, one shared pass for all scores on every family,
progress, cancellation, determinism, micro-batch invariance, bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moecomp.compression.activations import HostMemoryError, Plan, check_host_memory
from moecomp.compression.adapters import get_adapter
from moecomp.compression.context import Cancelled, RunContext
from moecomp.compression.engine import calibrate
from moecomp.compression.lazy_checkpoint import SafetensorsSource
from moecomp.compression.methods.block_drop import BlockDropConfig, BlockSimilarity
from moecomp.compression.methods.expert_drop import ExpertDropConfig, ExpertScores
from moecomp.compression.methods.layer_drop import LayerDropConfig, LayerSimilarity
from moecomp.compression.observers import SelectContext
from moecomp.compression.structure import Decisions
from tests.compression.reference import block_similarity, block_states, layer_similarity, load_full, router_means
from tests.compression.tiny_moe import FAMILY_CONFIGS, tiny_model


def _observers(source: SafetensorsSource, window: int = 2):
    sctx = SelectContext(family=source.family, config=source.config, prior=Decisions())
    return (
        ExpertScores(ExpertDropConfig(keep=3), sctx),
        LayerSimilarity(LayerDropConfig(drop=1), sctx),
        BlockSimilarity(BlockDropConfig(drop=window, mode="consecutive"), sctx),
    )


def _ids(n: int = 3, seq_len: int = 24, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_one_pass_agrees_with_reference_on_every_family(model_type: str, tmp_path: Path) -> None:
    tiny_model(model_type).save_pretrained(tmp_path)
    ids = _ids()
    source = SafetensorsSource(tmp_path)
    experts, layers, blocks = _observers(source)
    calibrate(source, ids, [experts, layers, blocks], dtype=torch.float32, micro_batch=2)

    model = load_full(tmp_path)
    for layer, ref in router_means(model, ids).items():
        engine = [experts.scores()[layer][e] for e in range(len(ref))]
        torch.testing.assert_close(torch.tensor(engine), torch.tensor(ref), rtol=0, atol=1e-5)
    for metric, ref in layer_similarity(model, ids).items():
        assert layers.similarity(metric).keys() == ref.keys()
        for i, v in ref.items():
            assert abs(layers.similarity(metric)[i] - v) < 1e-5
    states = block_states(model, ids)
    for engine, ref in (
        (blocks.similarity(), block_similarity(states, 1)),
        (blocks.window_similarity(), block_similarity(states, 2)),
    ):
        assert engine.keys() == ref.keys()
        for i, v in ref.items():
            assert abs(engine[i] - v) < 1e-5


def test_layer_tensors_equal_the_loaded_model(tiny_qwen2_moe_dir: Path) -> None:
    source = SafetensorsSource(tiny_qwen2_moe_dir)
    model = load_full(tiny_qwen2_moe_dir)
    expected = model.model.layers[3].state_dict()
    got = source.module_tensors("model.layers.3.", list(expected), None, torch.device("cpu"), torch.float32)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)
    kept = [1, 4, 9]
    sliced = source.module_tensors(
        "model.layers.3.", ["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"], kept,
        torch.device("cpu"), torch.float32,
    )  # fmt: skip
    for name in sliced:
        torch.testing.assert_close(sliced[name], expected[name][kept], rtol=0, atol=0)


def test_sharded_checkpoint_and_fused_tensors(tmp_path: Path) -> None:
    model = tiny_model("mixtral")
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    source = SafetensorsSource(tmp_path)
    expected = model.model.layers[2].state_dict()
    got = source.module_tensors("model.layers.2.", list(expected), None, torch.device("cpu"), torch.float32)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)


def test_progress_plan_and_cancellation(tiny_mixtral_dir: Path) -> None:
    events: list[tuple] = []
    ctx = RunContext(sink=lambda kind, stage, data: events.append((kind, stage, data)))
    source = SafetensorsSource(tiny_mixtral_dir)
    calibrate(source, _ids(2, 16, 8192), [], ctx=ctx, stage="probe", prior=Decisions(dropped_blocks=[3]))
    progress = [(d["step"], d["total"]) for kind, stage, d in events if kind == "progress" and stage == "probe"]
    assert progress == [(i, 8) for i in range(1, 9)]
    assert any(kind == "message" and "micro-batch" in d["text"] for kind, _, d in events)

    calls = iter(range(100))
    cancelling = RunContext(should_cancel=lambda: next(calls) >= 3)
    with pytest.raises(Cancelled):
        calibrate(source, _ids(2, 16, 8192), [], ctx=cancelling)


def test_deterministic_micro_batch_and_placement_invariant(tiny_mixtral_dir: Path) -> None:
    source = SafetensorsSource(tiny_mixtral_dir)
    ids = _ids(4, 32, 8192)
    runs = []
    for micro_batch, on_device in ((4, True), (4, True), (1, False)):  # the last keeps activations on the host
        observers = _observers(source)
        calibrate(
            source, ids, list(observers), dtype=torch.float32, micro_batch=micro_batch, activations_on_device=on_device
        )
        runs.append((observers[0].scores(), observers[1].similarity("residual"), observers[2].window_similarity()))
    assert runs[0] == runs[1]
    for a, b in zip(runs[0][1:], runs[2][1:], strict=True):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_bf16_pass_is_close_to_fp32(tiny_mixtral_dir: Path) -> None:
    source = SafetensorsSource(tiny_mixtral_dir)
    ids = _ids(2, 32, 8192)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        experts, layers, _ = _observers(source)
        calibrate(source, ids, [experts, layers], dtype=dtype)
        results[dtype] = layers.similarity("residual")
    assert all(abs(results[torch.float32][i] - results[torch.bfloat16][i]) < 2e-2 for i in range(8))


def test_in_pass_decisions_use_original_expert_ids(tiny_mixtral_dir: Path) -> None:
    """Expert drop on a layer already trimmed by an earlier stage reports original expert ids."""
    source = SafetensorsSource(tiny_mixtral_dir)
    prior = Decisions(kept_experts={0: [1, 3, 4, 6, 7]})
    sctx = SelectContext(family=source.family, config=source.config, prior=prior)
    observer = ExpertScores(ExpertDropConfig(keep=3, iterative=True), sctx)
    result = calibrate(source, _ids(2, 16, 8192), [observer], prior=prior, dtype=torch.float32)
    assert set(observer.scores()[0]) == {1, 3, 4, 6, 7}
    assert set(result.decisions.kept_experts[0]) <= {1, 3, 4, 6, 7} and len(result.decisions.kept_experts[0]) == 3
    assert len(result.decisions.kept_experts) == len(get_adapter(source.config).moe_layers(source.config))


def test_other_quantized_checkpoints_are_refused_with_a_reason(tmp_path: Path) -> None:
    # pack-quantized (int4) and float-quantized (FP8) checkpoints, as slimming writes them, are read dequantized
    # (tests/compression/slimming); any other quantized format is not read at all
    model = tiny_model("olmoe")
    model.config.quantization_config = {"quant_method": "compressed-tensors", "format": "int-quantized"}
    model.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="quantized checkpoint .*compressed-tensors.* before quantization"):
        SafetensorsSource(tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pass_agrees_with_cpu(tiny_qwen2_moe_dir: Path) -> None:
    source = SafetensorsSource(tiny_qwen2_moe_dir)
    ids = _ids(4, 64, 8192)
    results = []
    for device in ("cpu", "cuda"):
        observers = _observers(source)
        calibrate(source, ids, list(observers), device=device, dtype=torch.float32, micro_batch=2)
        results.append((observers[0].scores(), observers[1].similarity("residual"), observers[2].window_similarity()))
    for layer, scores in results[0][0].items():
        assert all(abs(scores[e] - results[1][0][layer][e]) < 1e-4 for e in scores)
    for a, b in zip(results[0][1:], results[1][1:], strict=True):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in a)
    observers = _observers(source)
    calibrate(source, ids, list(observers), device="cuda", dtype=torch.bfloat16)  # bf16 on the GPU runs too
    assert all(abs(v - results[0][1][k]) < 2e-2 for k, v in observers[1].similarity("residual").items())


def test_a_trimmed_remote_code_checkpoint_is_read_as_its_stock_family(tiny_mixtral_dir: Path, tmp_path: Path) -> None:
    """A second trimming pass reads the first pass's output (fewer experts in some layers, a dropped MoE)."""
    from moecomp.compression.export import export_trimmed
    from moecomp.compression.structure import apply_decisions

    decisions = Decisions(kept_experts={1: [0, 2, 3, 5, 6, 7], 4: [1, 2, 3, 4, 5, 6, 7]}, dropped_layers=[2])
    export_trimmed(tiny_mixtral_dir, decisions, tmp_path / "out", manifest={})
    source = SafetensorsSource(tmp_path / "out")
    assert source.config.model_type == "mixtral" and source.structure == Decisions(
        kept_experts={1: list(range(6)), 4: list(range(7))}, dropped_layers=[2]
    )
    ids = _ids(2, 32, 8192)
    experts, layers, blocks = _observers(source)
    calibrate(source, ids, [experts, layers, blocks], dtype=torch.float32)

    model = load_full(tiny_mixtral_dir)  # the same model trimmed in memory: same numbering (no block drop)
    apply_decisions(model, decisions, get_adapter(model.config).layout)
    for layer, ref in router_means(model, ids).items():
        assert sorted(experts.scores()[layer]) == list(range(len(ref)))
        assert all(abs(experts.scores()[layer][e] - v) < 1e-5 for e, v in enumerate(ref))
    reference = layer_similarity(model, ids)["residual"]
    assert layers.similarity("residual").keys() == reference.keys() and 2 not in reference
    assert all(abs(layers.similarity("residual")[i] - v) < 1e-5 for i, v in reference.items())
    adjacent = block_similarity(block_states(model, ids), 1)
    assert all(abs(blocks.similarity()[i] - v) < 1e-5 for i, v in adjacent.items())


def test_consecutive_block_drop_holds_the_host_memory_it_declares(tmp_path: Path) -> None:
    tiny_model("deepseek_v3").save_pretrained(tmp_path)
    source = SafetensorsSource(tmp_path)
    *_, blocks = _observers(source, window=3)
    result = calibrate(source, _ids(), [blocks], dtype=torch.float32)
    held = sum(t.nbytes for t in blocks._inputs.values())
    assert len(blocks._inputs) == 3 and held == blocks.host_bytes(result.plan.activation_bytes)


def test_a_pass_that_cannot_fit_in_host_memory_is_refused_before_it_starts() -> None:
    plan = Plan(activations_on_device=True, micro_batch=1, activation_bytes=2**30, layer_bytes=2**20)
    window = BlockSimilarity(BlockDropConfig(drop=8, mode="consecutive"), None).host_bytes(plan.activation_bytes)
    cpu = torch.device("cpu")
    with pytest.raises(HostMemoryError, match=r"needs at least 10\.0 GiB .* block_drop's drop") as refused:
        check_host_memory(plan, cpu, window, available=9 * 2**30)
    assert "and 9.0 GiB are available" in str(refused.value)
    check_host_memory(plan, cpu, window, available=11 * 2**30)
    # On CUDA with the activations on the device, only the window and the weights stay on the host.
    check_host_memory(plan, torch.device("cuda"), window, available=9 * 2**30)
    # The machine's own MemAvailable: no machine has a pebibyte.
    with pytest.raises(HostMemoryError):
        check_host_memory(Plan(True, 1, 2**50, 0), cpu, 0)
