"""Every slimming stage on every supported family (tiny random weights): it runs, exports and reloads.

The streamed pass itself reads each export back layer by layer and compares each layer with the one it slimmed,
so a run that returns is a checkpoint that loads; the tests check what it reports and what it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from moecomp.compression.adapters import RefusedMethod, get_adapter
from moecomp.compression.context import RunContext
from moecomp.compression.lazy_checkpoint import read_config
from moecomp.compression.methods.block_drop import BlockDropConfig
from moecomp.compression.methods.layer_drop import LayerDropConfig
from moecomp.compression.methods.pruning import MagnitudeConfig, SparseGPTConfig, WandaConfig
from moecomp.compression.methods.quantization import AWQConfig, GPTQConfig, RTNConfig
from moecomp.compression.pipeline import compress
from moecomp.compression.recipe import CalibrationSpec, Recipe
from moecomp.compression.slimming.run import run_streamed
from moecomp.compression.slimming.verify import LAYER_TOLERANCE
from moecomp.compression.structure import Decisions
from tests.compression.dense_view import dequantized_view
from tests.compression.tiny_moe import FAMILY_CONFIGS, LLMCOMPRESSOR_REFUSED, tiny_model

STAGES = {
    "rtn": RTNConfig(),
    "gptq": GPTQConfig(),
    "awq": AWQConfig(),
    "magnitude": MagnitudeConfig(sparsity=0.5),
    "wanda": WandaConfig(pattern="2:4"),
    "sparsegpt": SparseGPTConfig(sparsity=0.5),
}
QUANTIZATION = ("rtn", "gptq", "awq")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, tiny_mixtral_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    tokenizer = AutoTokenizer.from_pretrained(tiny_mixtral_dir)
    for model_type in FAMILY_CONFIGS:
        tiny_model(model_type).save_pretrained(root / model_type)
        tokenizer.save_pretrained(root / model_type)
    return {model_type: root / model_type for model_type in FAMILY_CONFIGS}


def _router_times_norm(model_dir: Path, layer: int) -> torch.Tensor:
    """W_router * g_norm: the router's logits are (W * g) @ x_hat, so AWQ's fold must leave this product alone
    (g = offset + weight where the norm scales by 1 + weight, as Qwen3-Next's)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=True)
    layout = get_adapter(read_config(model_dir)).layout  # a checkpoint with bundled code: its stock family
    block = model.get_submodule(layout.layers)[layer]
    router = block.get_submodule(layout.router).weight
    return router.float() * (layout.norm_weight_offset + block.get_submodule(layout.post_attention_norm).weight.float())


@pytest.mark.slow
@pytest.mark.parametrize("method", STAGES)
@pytest.mark.parametrize("model_type", FAMILY_CONFIGS)
def test_every_slimming_stage_on_every_family(sources: dict[str, Path], tmp_path: Path, model_type: str, method: str):
    """Every stage through the streamed pass (the default backend)."""
    source = sources[model_type]
    calib = torch.randint(1, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    report = run_streamed(
        source, [STAGES[method]], calib, tmp_path, prior=Decisions(), device="cpu", dtype=torch.float32,
        save_dtype=torch.float32, ctx=RunContext(),
    )[0]  # fmt: skip
    assert report["checkpoint"]["reload_worst_layer_error"] <= LAYER_TOLERANCE
    results = report["results"]
    config = AutoConfig.from_pretrained(source)
    family = get_adapter(config)
    moe_layers = family.moe_layers(config)
    assert results["targets"]["routed_experts"] == 3 * family.num_experts(config) * len(moe_layers)
    assert results["routers_unchanged"] is (method != "awq")  # AWQ folds its scale into the router
    if method not in QUANTIZATION:
        realized = results["realized_sparsity"].values()
        # SparseGPT also prunes the weight at its threshold (as llm-compressor does): one extra per 128-column
        # block (1 of 2048 in these tiny experts, 1 of ~500,000 in Mixtral-8x7B's).
        assert all(v == (pytest.approx(0.5, abs=1e-3) if method == "sparsegpt" else 0.5) for v in realized)
        return
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["format"] == "pack-quantized"
    # transformers dequantizes fused experts with the first scheme naming "experts": it must be theirs.
    first = next(iter(saved["config_groups"].values()))
    assert any(r"experts\.\d+\." in target for target in first["targets"]), first["targets"]
    assert first["weights"]["group_size"] == results["group_sizes"]["routed_experts"]
    if method == "awq":
        for layer in moe_layers:
            torch.testing.assert_close(_router_times_norm(tmp_path, layer), _router_times_norm(source, layer))


@pytest.mark.parametrize("model_type", LLMCOMPRESSOR_REFUSED)
def test_families_that_refuse_llmcompressors_backend_say_why_before_any_work(
    tmp_path: Path, tiny_mixtral_dir: Path, model_type: str
) -> None:
    """compress() refuses every slimming stage on llm-compressor's backend at once, with the adapter's reason; no
    output folder is left; the same stage on moecomp's backend runs."""
    source = tmp_path / "source"
    tiny_model(model_type, vocab_size=8192).save_pretrained(source)  # the tokenizer's vocabulary
    AutoTokenizer.from_pretrained(tiny_mixtral_dir).save_pretrained(source)
    reason = dict(get_adapter(AutoConfig.from_pretrained(source)).refused)["slimming:llmcompressor"]
    calibration = CalibrationSpec(samples=2, seq_len=16, seed=0)
    for method, stage in STAGES.items():
        on_llmcompressor = stage.model_copy(update={"backend": "llmcompressor"})
        recipe = Recipe(stages=[LayerDropConfig(drop=1), on_llmcompressor], calibration=calibration)
        with pytest.raises(RefusedMethod, match=f"{method} is not supported on {model_type}: ") as refused:
            compress(source, recipe, tmp_path / "out", device="cpu")
        assert reason in str(refused.value) and not (tmp_path / "out").exists()
    recipe = Recipe(stages=[LayerDropConfig(drop=1), RTNConfig()], calibration=calibration)
    assert [s["method"] for s in compress(source, recipe, tmp_path / "ours", device="cpu")["stages"]] == [
        "layer_drop",
        "rtn",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "stages",
    [
        [AWQConfig(), LayerDropConfig(drop=1)],
        [AWQConfig(), BlockDropConfig(drop=1)],
        [LayerDropConfig(drop=1), GPTQConfig()],  # trimmed into bundled modeling code, then quantized
    ],
    ids=lambda stages: "+".join(s.method for s in stages),
)
@pytest.mark.parametrize("model_type", ["deepseek_v3", "gpt_oss", "llama4_text"])
def test_compositions(tmp_path: Path, tiny_mixtral_dir: Path, stages: list, model_type: str) -> None:
    """The study's headline recipes, and trimming first: the packed, trimmed checkpoint loads and is exactly
    the dense model its weights stand for. Quantized input-major experts (gpt-oss, Llama 4) always carry the code
    that fuses them on load, also after a trimming pass re-exported them."""
    source = tmp_path / "source"
    tiny_model(model_type, vocab_size=8192).save_pretrained(source)  # the tokenizer's vocabulary
    AutoTokenizer.from_pretrained(tiny_mixtral_dir).save_pretrained(source)
    recipe = Recipe(stages=stages, calibration=CalibrationSpec(samples=8, seq_len=32, seed=0))
    manifest = compress(source, recipe, tmp_path / "out", device="cpu")
    assert [s["method"] for s in manifest["stages"]] == [s.method for s in stages]
    stock = stages[1].method == "block_drop" and not get_adapter(read_config(source)).layout.experts_input_major
    assert manifest["output"]["loading"] == ("stock" if stock else "remote_code")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["format"] == (
        "pack-quantized"
    )
    ids = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(0))
    dense = dequantized_view(tmp_path / "out", tmp_path / "dense")
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)(ids).logits
        expected = AutoModelForCausalLM.from_pretrained(dense, trust_remote_code=True)(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
