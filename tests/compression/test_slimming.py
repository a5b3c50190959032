"""The slimming pass: export reload in a fresh interpreter, zero-token fallback, progress and cancellation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from moecomp.compression.adapters import FAMILIES
from moecomp.compression.context import Cancelled, RunContext
from moecomp.compression.methods.layer_drop import LayerDropConfig
from moecomp.compression.methods.pruning import WandaConfig
from moecomp.compression.methods.quantization import GPTQConfig, RTNConfig
from moecomp.compression.slimming.llmcompressor_pass import export_slimmed, load_linearized, slim_model, validate_stages
from moecomp.compression.slimming.llmcompressor_seam import save_conversions
from moecomp.compression.slimming.reload_check import ExportMismatch, verify_reload
from tests.compression.slimming_fixtures import calibration_ids

RELOAD = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    ids = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(model(ids).logits, sys.argv[3])
    print(type(model.model.layers[0].mlp.experts).__name__)
    """
)


def test_quantization_must_come_last_and_only_slimming_stages() -> None:
    with pytest.raises(ValueError, match="last"):
        validate_stages([GPTQConfig(), WandaConfig()], "cpu")
    with pytest.raises(ValueError, match="not slimming stages"):
        validate_stages([WandaConfig(), LayerDropConfig()], "cpu")
    validate_stages([WandaConfig(), WandaConfig(pattern="2:4"), RTNConfig()], "cpu")


def test_mixtral_experts_are_saved_under_their_disk_names() -> None:
    renames = save_conversions(FAMILIES["mixtral"])
    sources = {r.source_patterns[0] for r in renames}
    assert r"\.experts\.(\d+)\.w1\." in sources and ".block_sparse_moe." in sources
    assert save_conversions(FAMILIES["qwen2_moe"]) == []  # stored as gate_proj/up_proj/down_proj already


@pytest.mark.slow
@torch.no_grad()
def test_w4a16_checkpoint_reloads_in_a_fresh_interpreter(tmp_path: Path, tiny_qwen2_moe_dir: Path) -> None:
    calib = calibration_ids(tiny_qwen2_moe_dir, samples=4, seq_len=64)
    model, family, tokenizer = load_linearized(tiny_qwen2_moe_dir, torch.float32)
    reports = slim_model(model, family, tokenizer, [GPTQConfig()], calib, device="cpu", ctx=RunContext())
    out = tmp_path / "w4a16"
    check = export_slimmed(
        model, family, tokenizer, out, source_dir=tiny_qwen2_moe_dir, quantized=True, check_ids=calib
    )
    expected = model(calib[:2]).logits
    torch.save(calib[:2], tmp_path / "ids.pt")
    done = subprocess.run(
        [sys.executable, "-I", "-c", RELOAD, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("Qwen2MoeExperts")  # stock fused experts, no moecomp code
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=1e-5)
    assert check["reload_top1_agreement"] == 1.0
    assert reports[0]["results"]["routers_unchanged"]
    config = (out / "config.json").read_text()
    assert '"format": "pack-quantized"' in config and "shared_expert_gate" not in config.split('"ignore"')[0]


@torch.no_grad()
def test_reload_check_names_the_module_that_answers_differently(tmp_path: Path, tiny_mixtral_dir: Path) -> None:
    model, family, tokenizer = load_linearized(tiny_mixtral_dir, torch.float32)
    calib = calibration_ids(tiny_mixtral_dir, samples=2, seq_len=32)
    out = tmp_path / "out"
    check = export_slimmed(model, family, tokenizer, out, source_dir=tiny_mixtral_dir, quantized=False, check_ids=calib)
    # embeddings, 8 x (2 norms, 4 attention projections, router, fused experts), final norm, lm_head
    assert check["reload_modules_checked"] == 1 + 8 * 8 + 2
    assert check["reload_worst_module_error"] == 0.0 and check["reload_top1_agreement"] == 1.0
    model.model.layers[3].mlp.experts[5].down_proj.weight.mul_(1.5)  # as if one expert had loaded wrongly
    with pytest.raises(ExportMismatch, match=r"1 of 67 modules .* worst model\.layers\.3\.mlp\.experts "):
        verify_reload(out, model, family, calib)


@pytest.mark.slow
@torch.no_grad()
def test_experts_without_tokens_fall_back_to_round_to_nearest(tiny_qwen2_moe_dir: Path) -> None:
    calib = calibration_ids(tiny_qwen2_moe_dir, samples=1, seq_len=3)  # 3 tokens x top-4 of 16 experts
    model, family, tokenizer = load_linearized(tiny_qwen2_moe_dir, torch.float32)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if ".experts." in n}
    stage = GPTQConfig(calibrate_all_experts=False, scope=["routed_experts"])
    results = slim_model(model, family, tokenizer, [stage], calib, device="cpu", ctx=RunContext())[0]["results"]
    tokens = results["tokens_per_expert"]
    idle = {(layer, e) for layer, counts in tokens.items() for e, n in enumerate(counts) if n == 0}
    assert idle and all(sum(counts) == 3 * 4 for counts in tokens.values())
    fell_back = {(int(n.split(".")[2]), int(n.split(".")[5])) for n in results["fallbacks"]}
    assert fell_back == idle
    for name in results["fallbacks"]:
        weight, before = model.get_submodule(name).weight, original[name + ".weight"]
        assert torch.isfinite(weight).all()
        error = float((weight - before).norm() / before.norm())
        assert 0 < error < 0.2, (name, error)  # 4-bit round-to-nearest, not zeroed


@pytest.mark.slow
def test_progress_per_layer_and_cancellation(tiny_mixtral_dir: Path) -> None:
    calib = calibration_ids(tiny_mixtral_dir, samples=1, seq_len=16)
    model, family, tokenizer = load_linearized(tiny_mixtral_dir, torch.float32)
    events: list[tuple[str, str, dict]] = []
    ctx = RunContext(sink=lambda kind, stage, data: events.append((kind, stage, data)))
    slim_model(model, family, tokenizer, [WandaConfig()], calib, device="cpu", ctx=ctx)
    steps = [data["step"] for kind, stage, data in events if kind == "progress" and stage == "wanda"]
    assert steps == list(range(1, 9))
    cancel = RunContext(should_cancel=lambda: True)
    with pytest.raises(Cancelled):
        slim_model(model, family, tokenizer, [GPTQConfig()], calib, device="cpu", ctx=cancel)
