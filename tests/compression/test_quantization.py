"""Quantization stages: configs, group sizes, targets, and quality on the trained tiny-mixtral fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from moecomp.compression.context import RunContext
from moecomp.compression.methods.quantization import (
    AWQConfig,
    FP8Config,
    GPTQConfig,
    RTNConfig,
    config_groups,
    group_sizes_used,
    resolve_group_size,
)
from moecomp.compression.recipe import Recipe
from moecomp.compression.slimming.llmcompressor_modifiers import split_patterns
from moecomp.compression.slimming.llmcompressor_pass import load_linearized, run_slimming
from moecomp.compression.slimming.run import run_streamed
from moecomp.compression.slimming.targets import find_targets
from moecomp.compression.structure import Decisions
from tests.compression.slimming_fixtures import calibration_ids, heldout_ids, perplexity


@pytest.mark.parametrize(
    ("width", "requested", "expected"), [(64, 128, 64), (256, 128, 128), (96, 64, 48), (100, 128, 100), (7, 4, 1)]
)
def test_group_size_is_the_largest_divisor_not_above_the_request(width: int, requested: int, expected: int) -> None:
    assert resolve_group_size(width, requested) == expected
    assert resolve_group_size(width, None) is None


def test_scope_must_keep_routed_experts() -> None:
    with pytest.raises(ValidationError, match="routed_experts"):
        GPTQConfig(scope=["attention"])
    assert GPTQConfig(scope=["attention", "routed_experts"]).scope == ["routed_experts", "attention"]


def test_configs_round_trip_through_a_recipe() -> None:
    for stage in [GPTQConfig(bits=8, group_size=None), AWQConfig(preserve_routing=False), RTNConfig(), FP8Config()]:
        recipe = Recipe(stages=[stage])  # one quantization stage a recipe
        assert Recipe.model_validate_json(recipe.model_dump_json()) == recipe


def test_targets_never_include_routers_or_shared_gates(tiny_qwen2_moe_dir: Path) -> None:
    model, family, _ = load_linearized(tiny_qwen2_moe_dir)
    targets = find_targets(model, family, ["routed_experts", "shared_experts", "attention"])
    names = {t.name for t in targets}
    assert not any(n.endswith("mlp.gate") or n.endswith("shared_expert_gate") for n in names)
    # 8 layers x (16 experts x 3 + shared expert 3 + attention 4)
    assert len(targets) == 8 * (16 * 3 + 3 + 4)
    assert {t.scope for t in find_targets(model, family, ["routed_experts"])} == {"routed_experts"}


def test_routed_experts_share_one_group_size_others_get_their_own(tiny_qwen2_moe_dir: Path) -> None:
    model, family, _ = load_linearized(tiny_qwen2_moe_dir)
    routed, others = split_patterns(find_targets(model, family, ["routed_experts", "shared_experts"]))
    assert sorted(routed) == [64, 128] and sorted(others) == [128, 256]  # down 64 wide; shared down 256
    groups = config_groups(GPTQConfig(group_size=128), routed, others)
    first = groups["group_0"]  # transformers dequantizes fused experts with the first experts scheme
    assert first["weights"]["group_size"] == 64 and all(r"mlp\.experts\." in t for t in first["targets"])
    assert [g["weights"]["group_size"] for g in groups.values()] == [64, 128]
    assert group_sizes_used(GPTQConfig(), routed, others) == {"routed_experts": 64, "in_128": 128, "in_256": 128}


def test_asymmetric_quantization_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="weight_zero_point"):
        AWQConfig(symmetric=False)


def test_fp8_is_refused_without_fp8_hardware(tmp_path: Path, tiny_mixtral_dir: Path) -> None:
    with pytest.raises(ValueError, match="fp8 needs a CUDA GPU"):
        run_slimming(
            tiny_mixtral_dir,
            [FP8Config()],
            torch.zeros(1, 8, dtype=torch.long),
            tmp_path,
            device="cpu",
            ctx=RunContext(),
        )


@pytest.fixture(scope="module")
def mixtral_quantized(tmp_path_factory: pytest.TempPathFactory, tiny_mixtral_dir: Path) -> dict:
    """Each 4-bit method once on tiny-mixtral (group 64, calibration 16 x 128 tokens), with held-out ppl."""
    calib = calibration_ids(tiny_mixtral_dir, samples=16, seq_len=128)
    held = heldout_ids(tiny_mixtral_dir)
    runs: dict = {"base": {"ppl": perplexity(tiny_mixtral_dir, held)}}
    stages = {
        "rtn": RTNConfig(group_size=64),
        "gptq": GPTQConfig(group_size=64),
        "awq": AWQConfig(group_size=64),
        "awq_unpreserved": AWQConfig(group_size=64, preserve_routing=False),
    }
    for name, stage in stages.items():
        out = tmp_path_factory.mktemp(name)
        reports = run_slimming(tiny_mixtral_dir, [stage], calib, out, device="cpu", ctx=RunContext())
        runs[name] = {"reports": reports, "dir": out, "ppl": perplexity(out, held)}
    for name in ("awq", "awq_unpreserved"):  # moecomp's batched AWQ, streamed (the default backend)
        out = tmp_path_factory.mktemp(f"{name}_streamed")
        reports = run_streamed(
            tiny_mixtral_dir, [stages[name]], calib, out, prior=Decisions(), device="cpu", dtype=torch.float32,
            save_dtype=torch.bfloat16, ctx=RunContext(),
        )  # fmt: skip
        runs[f"{name}_streamed"] = {"reports": reports, "dir": out, "ppl": perplexity(out, held)}
    runs["calib"] = calib
    return runs


@pytest.mark.slow
def test_gptq_beats_rtn_at_the_same_bits(mixtral_quantized: dict) -> None:
    base, rtn, gptq = (mixtral_quantized[k]["ppl"] for k in ("base", "rtn", "gptq"))
    assert base < gptq < rtn, (base, gptq, rtn)


@pytest.mark.slow
def test_awq_with_routing_preserved_costs_no_quality(mixtral_quantized: dict) -> None:
    """Preserving routing (the router absorbs s) keeps the routing exactly (test_awq_preserves_routing_logits)
    at no cost in held-out perplexity. That it is better, as the study found at scale, does not hold on this
    fixture in every environment: 24.621 vs 24.585 here (2026-12-06, both backends alike), the other way before."""
    preserved, unpreserved = mixtral_quantized["awq"]["ppl"], mixtral_quantized["awq_unpreserved"]["ppl"]
    assert preserved <= unpreserved * 1.005, (preserved, unpreserved)
    assert preserved < mixtral_quantized["rtn"]["ppl"] and unpreserved < mixtral_quantized["rtn"]["ppl"]


@pytest.mark.slow
def test_streamed_awq_within_half_a_percent_of_llm_compressors(mixtral_quantized: dict) -> None:
    """Batched AWQ (its up -> down search sees each expert's real inputs, see slimming/awq.py): held-out perplexity
    within 0.5% of llm-compressor's, with routing preserved or not, and better than the unquantized-data RTN's."""
    for name in ("awq", "awq_unpreserved"):
        ours, theirs = mixtral_quantized[f"{name}_streamed"]["ppl"], mixtral_quantized[name]["ppl"]
        assert ours <= theirs * 1.005, (name, ours, theirs)
        assert ours < mixtral_quantized["rtn"]["ppl"], name
    results = mixtral_quantized["awq_streamed"]["reports"][0]["results"]
    assert results["backend"] == "moecomp" and results["preserve_routing"]
    # every kind of pair of tiny-mixtral cut its consumer's error (1.0 would be the identity's)
    assert set(results["error_reduction"]) == {"input_layernorm", "post_attention_layernorm", "experts.up_proj"}
    assert all(0 < r < 1 for r in results["error_reduction"].values()), results["error_reduction"]


@pytest.mark.slow
def test_routers_are_bit_identical_except_where_awq_rescales_them(mixtral_quantized: dict) -> None:
    for name in ("rtn", "gptq", "awq_unpreserved", "awq_unpreserved_streamed"):
        assert mixtral_quantized[name]["reports"][0]["results"]["routers_unchanged"], name
    # AWQ with routing preserved multiplies the router by s (the norm was divided by s): weights change
    for name in ("awq", "awq_streamed"):
        assert not mixtral_quantized[name]["reports"][0]["results"]["routers_unchanged"], name


def _top2_flips(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Fraction of tokens whose set of top-2 experts differs."""
    pick = lambda logits: logits.topk(2).indices.sort().values  # noqa: E731
    return float((pick(ref) != pick(got)).any(-1).float().mean())


@pytest.mark.slow
@torch.no_grad()
def test_awq_preserves_routing_logits(mixtral_quantized: dict, tiny_mixtral_dir: Path) -> None:
    """router(norm(x)) of the AWQ model equals the original's for the same x (up to bf16 rounding)."""
    original = AutoModelForCausalLM.from_pretrained(tiny_mixtral_dir)  # bf16, as the checkpoints
    x = torch.randn(512, 128, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    runs = [("awq", True), ("awq_unpreserved", False), ("awq_streamed", True), ("awq_unpreserved_streamed", False)]
    for name, preserved in runs:
        smoothed = AutoModelForCausalLM.from_pretrained(mixtral_quantized[name]["dir"])
        flips = []
        for a, b in zip(original.model.layers, smoothed.model.layers, strict=True):
            ref = a.mlp.gate(a.post_attention_layernorm(x))[0].float()
            got = b.mlp.gate(b.post_attention_layernorm(x))[0].float()
            flips.append(_top2_flips(ref, got))
            if preserved:
                torch.testing.assert_close(got, ref, rtol=0.02, atol=0.02 * float(ref.abs().max()))
        assert (max(flips) < 0.02) == preserved, (name, flips)


@pytest.mark.slow
def test_report_has_tokens_per_expert_group_sizes_and_size(mixtral_quantized: dict) -> None:
    report = mixtral_quantized["gptq"]["reports"][0]
    tokens = report["results"]["tokens_per_expert"]
    assert sorted(tokens) == list(range(8))
    calib = mixtral_quantized["calib"]
    assert all(sum(counts) == calib.numel() * 2 for counts in tokens.values())  # top-2 routing
    assert report["results"]["group_sizes"] == {"routed_experts": 64, "in_128": 64}
    assert report["results"]["fallbacks"] == []
    check = report["checkpoint"]
    assert check["reload_top1_agreement"] >= 0.9
    # embeddings and lm_head stay bf16 (4.2 of 17.6 MB); the 4-bit linears shrink ~3.5x with their scales
    assert check["weights_ratio"] < 0.75
    assert mixtral_quantized["rtn"]["reports"][0]["results"]["tokens_per_expert"] is None
