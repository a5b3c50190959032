"""Slimming then trimming: a quantized checkpoint is scored on its dense view and exported still packed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from moecomp.compression.activations import build_skeleton
from moecomp.compression.adapters import get_adapter
from moecomp.compression.context import RunContext
from moecomp.compression.engine import load_layer
from moecomp.compression.export import export_trimmed
from moecomp.compression.lazy_checkpoint import SafetensorsSource
from moecomp.compression.methods.layer_drop import LayerDropConfig
from moecomp.compression.methods.quantization import AWQConfig, RTNConfig
from moecomp.compression.pipeline import compress
from moecomp.compression.recipe import CalibrationSpec, Recipe
from moecomp.compression.slimming.llmcompressor_pass import run_slimming
from moecomp.compression.structure import Decisions, apply_decisions
from moecomp.compression.trimming import run_trimming
from tests.compression.dense_view import dequantized_view, is_pack_quantized
from tests.compression.slimming_fixtures import calibration_ids

RELOAD = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    with torch.no_grad():
        torch.save(model(torch.load(sys.argv[2])).logits.float(), sys.argv[3])
    print(type(model.model.layers[int(sys.argv[4])].mlp).__name__)
    """
)


@torch.no_grad()
def _logits(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    return AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)(ids).logits.float()


@pytest.mark.slow
@torch.no_grad()
def test_a_quantized_checkpoint_is_read_as_its_dense_view(tmp_path: Path, tiny_qwen2_moe_dir: Path) -> None:
    """The engine's reader dequantizes packed weights on read: exactly what the dense view holds, and the dense
    view itself reproduces the quantized model in stock transformers."""
    calib = calibration_ids(tiny_qwen2_moe_dir, samples=2, seq_len=32)
    run_slimming(tiny_qwen2_moe_dir, [RTNConfig()], calib, tmp_path / "q", device="cpu", ctx=RunContext())
    dense = dequantized_view(tmp_path / "q", tmp_path / "dense")
    assert is_pack_quantized(tmp_path / "q") and not is_pack_quantized(dense)
    torch.testing.assert_close(_logits(dense, calib), _logits(tmp_path / "q", calib), rtol=0, atol=0)
    cpu = torch.device("cpu")
    sources = [SafetensorsSource(tmp_path / "q"), SafetensorsSource(dense)]
    skeletons = [build_skeleton(source, cpu, torch.bfloat16) for source in sources]
    for layer in range(sources[0].config.num_hidden_layers):
        got, want = (
            load_layer(model, source, layer, Decisions(), cpu, torch.bfloat16).state_dict()
            for model, source in zip(skeletons, sources, strict=True)
        )
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in got), layer


@pytest.mark.slow
@torch.no_grad()
def test_layer_drop_on_a_quantized_checkpoint_equals_dropping_in_memory(tmp_path: Path, tiny_mixtral_dir: Path) -> None:
    calib = calibration_ids(tiny_mixtral_dir, samples=4, seq_len=64)
    run_slimming(tiny_mixtral_dir, [RTNConfig()], calib, tmp_path / "q", device="cpu", ctx=RunContext())
    dense = dequantized_view(tmp_path / "q", tmp_path / "dense")
    drop = [LayerDropConfig(drop=2)]
    decisions, _ = run_trimming(tmp_path / "q", drop, calib, dtype=torch.bfloat16, ctx=RunContext())
    assert decisions == run_trimming(dense, drop, calib, dtype=torch.bfloat16, ctx=RunContext())[0]
    export_trimmed(tmp_path / "q", decisions, tmp_path / "out", manifest={}, ctx=RunContext())
    reference = AutoModelForCausalLM.from_pretrained(dense)
    apply_decisions(reference, decisions, get_adapter(reference.config).layout)
    torch.testing.assert_close(_logits(tmp_path / "out", calib), reference(calib).logits.float(), rtol=0, atol=0)
    assert is_pack_quantized(tmp_path / "out")


@pytest.mark.slow
def test_compress_awq_then_layer_drop_loads_in_a_fresh_interpreter(tmp_path: Path, tiny_mixtral_dir: Path) -> None:
    recipe = Recipe(
        stages=[AWQConfig(), LayerDropConfig(drop=2)],
        calibration=CalibrationSpec(samples=8, seq_len=64, seed=0),
    )
    manifest = compress(tiny_mixtral_dir, recipe, tmp_path / "out", device="cpu")
    dropped = manifest["decisions"]["dropped_layers"]
    assert len(dropped) == 2 and manifest["output"]["loading"] == "remote_code"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized" and "auto_map" in config
    weights = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors"))
    assert weights < 0.5 * sum(p.stat().st_size for p in tiny_mixtral_dir.glob("*.safetensors"))
    ids = calibration_ids(tiny_mixtral_dir, samples=2, seq_len=64)
    torch.save(ids, tmp_path / "ids.pt")
    args = [str(tmp_path / "out"), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt"), str(dropped[0])]
    done = subprocess.run(
        [sys.executable, "-I", "-c", RELOAD, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("DroppedMLP")
    # The packed checkpoint, reloaded in a fresh interpreter by stock transformers (plus the bundled
    # DroppedMLP), is exactly the dense model its weights stand for: nothing was reloaded at random.
    dense = dequantized_view(tmp_path / "out", tmp_path / "dense")
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), _logits(dense, ids), rtol=0, atol=0)
