"""gpt-oss as the hub ships it: experts stored as mxfp4 blocks and scales (``quantization_config.quant_method``
"mxfp4"). Trimming and slimming read them dequantized (trimming writes a plain bf16 checkpoint); the reference is
transformers' own dequantizing loader (``Mxfp4Config(dequantize=True)``, which runs on CPU with neither triton nor
kernels)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export import decided_logits
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Mxfp4Config, PreTrainedModel

from moecomp.compression.context import RunContext
from moecomp.compression.evaluation.loading import load_checkpoint
from moecomp.compression.lazy_checkpoint import SafetensorsSource
from moecomp.compression.manifest import read_manifest
from moecomp.compression.pipeline import compress
from moecomp.compression.recipe import Recipe
from moecomp.compression.sizes import model_sizes
from moecomp.compression.structure import Decisions, apply_decisions
from tests.compression.tiny_moe import tiny_model

CALIBRATION = {"sources": ["bundled:shakespeare"], "samples": 4, "seq_len": 32}
IDS = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(0))
EXPERTS = "model.layers.{}.mlp.experts"
QUANTIZATION = {  # as gpt-oss-20b's config.json has it
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}


def _mxfp4(rows: int, cols: int, experts: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random mxfp4 parts of a [E, cols, rows] expert tensor: 32 values (16 bytes) a group along ``cols``, and an
    exponent a group near 2^-4 (a realistic weight scale; biased by 127)."""
    groups = cols // 32
    blocks = torch.randint(0, 256, (experts, rows, groups, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(119, 127, (experts, rows, groups), dtype=torch.uint8, generator=generator)
    return {"_blocks": blocks, "_scales": scales}


@pytest.fixture(scope="module")
def mxfp4_dir(tmp_path_factory: pytest.TempPathFactory, tiny_mixtral_dir: Path) -> Path:
    """A tiny bf16 gpt-oss whose experts are replaced by mxfp4 parts, stored the way gpt-oss-20b stores them:
    ``gate_up_proj_blocks [E, 2I, H/32, 16]``, ``down_proj_blocks [E, H, I/32, 16]``, scales without the last axis."""
    source = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    model = tiny_model("gpt_oss", vocab_size=8192, dtype=torch.bfloat16)
    model.save_pretrained(source)
    AutoTokenizer.from_pretrained(tiny_mixtral_dir).save_pretrained(source)
    config = model.config
    experts, hidden, inter = config.num_local_experts, config.hidden_size, config.intermediate_size
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    for layer in range(config.num_hidden_layers):
        prefix = EXPERTS.format(layer)
        for name, rows, cols in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)):
            del tensors[f"{prefix}.{name}"]
            for suffix, tensor in _mxfp4(rows, cols, experts, generator).items():
                tensors[f"{prefix}.{name}{suffix}"] = tensor
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    data = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**data, "quantization_config": QUANTIZATION}, indent=2))
    return source


@pytest.fixture(scope="module")
def dequantized_dir(tmp_path_factory: pytest.TempPathFactory, mxfp4_dir: Path) -> Path:
    """transformers' dequantized model as a plain bf16 checkpoint. Not through its own save_pretrained: in
    transformers 5.17 that writes no gate_up_proj / down_proj for a model loaded with Mxfp4Config(dequantize=True)."""
    out = tmp_path_factory.mktemp("gpt-oss-dequantized")
    config = AutoConfig.from_pretrained(mxfp4_dir)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(reference(mxfp4_dir).bfloat16().state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(mxfp4_dir).save_pretrained(out)
    return out


def reference(mxfp4_dir: Path) -> PreTrainedModel:
    """transformers' dequantized model (bf16 experts), in float32: every bf16 value is exact there."""
    model, info = AutoModelForCausalLM.from_pretrained(
        mxfp4_dir, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.bfloat16, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return model.float().eval()


def _compress(source: Path, stages: list[dict[str, Any]], out: Path) -> tuple[dict[str, Any], list[str]]:
    """compress(); the manifest and the messages the job showed."""
    messages: list[str] = []
    ctx = RunContext(sink=lambda kind, stage, data: messages.append(data["text"]) if kind == "message" else None)
    recipe = Recipe.model_validate({"stages": stages, "calibration": CALIBRATION})
    return compress(source, recipe, out, ctx=ctx), messages


def _reload(out: Path, manifest: dict[str, Any]) -> PreTrainedModel:
    """The output in stock transformers (its bundled code where the config cannot say the shape)."""
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    trust = manifest["output"]["loading"] == "remote_code"
    model, info = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, trust_remote_code=trust, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    return model.eval()


@torch.no_grad()
def _logits(model: PreTrainedModel) -> torch.Tensor:
    logits = model(IDS).logits
    assert logits.isfinite().all()
    return logits


@torch.no_grad()
def _masked_logits(model: PreTrainedModel, kept: dict[int, list[int]]) -> torch.Tensor:
    """The full model with each dropped expert's router logit at -inf: top-k (and its softmax) never sees it."""
    for layer, experts in kept.items():
        router = model.model.layers[layer].mlp.router
        dropped = [e for e in range(router.bias.shape[0]) if e not in experts]
        router.bias[dropped] = float("-inf")
    return _logits(model)


def _assert_notes(manifest: dict[str, Any], messages: list[str], out: Path) -> None:
    notes = [n for n in manifest["notes"] if "mxfp4" in n]
    assert len(notes) == 1 and "dequantized to bfloat16" in notes[0] and notes[0] in messages
    assert read_manifest(out)["notes"] == manifest["notes"]  # the file, not only the returned dict
    assert notes[0] in (out / "README.md").read_text()


def test_the_source_reads_each_layer_as_transformers_dequantizes_it(mxfp4_dir: Path) -> None:
    source = SafetensorsSource(mxfp4_dir)
    assert source.stored is not None and not hasattr(source.config, "quantization_config")
    ref = reference(mxfp4_dir)
    names = ["gate_up_proj", "down_proj", "gate_up_proj_bias"]
    read = source.module_tensors(EXPERTS.format(1) + ".", names, [0, 2, 5], torch.device("cpu"), torch.bfloat16)
    for name in names:
        expected = getattr(ref.model.layers[1].mlp.experts, name)[[0, 2, 5]].bfloat16()
        assert torch.equal(read[name], expected), name


def test_an_empty_recipe_writes_the_dequantized_model_in_plain_bf16(mxfp4_dir: Path, tmp_path: Path) -> None:
    manifest, messages = _compress(mxfp4_dir, [], tmp_path / "out")
    model, ref = _reload(tmp_path / "out", manifest), reference(mxfp4_dir)
    assert manifest["output"]["loading"] == "stock"
    assert {k: v.dtype for k, v in load_file(tmp_path / "out" / "model.safetensors").items()} == {
        k: torch.bfloat16 for k in ref.state_dict()
    }
    torch.testing.assert_close(model.state_dict(), ref.state_dict(), atol=0, rtol=0)
    torch.testing.assert_close(_logits(model), _logits(ref), atol=0, rtol=0)
    _assert_notes(manifest, messages, tmp_path / "out")


@pytest.mark.parametrize("mode", ["layerwise", "global"])
def test_expert_drop_keeps_the_dequantized_experts_it_chose(
    mxfp4_dir: Path, dequantized_dir: Path, tmp_path: Path, mode: str
) -> None:
    stages = [{"method": "expert_drop", "mode": mode, "keep": 3}]
    manifest, messages = _compress(mxfp4_dir, stages, tmp_path / "out")
    kept = Decisions.from_json(manifest["decisions"]).kept_experts
    # scored on the same weights as transformers' dequantized copy: the same scores, the same choice
    plain, _ = _compress(dequantized_dir, stages, tmp_path / "plain")
    assert manifest["stages"][0]["scores"] == plain["stages"][0]["scores"]
    assert manifest["decisions"] == plain["decisions"]
    model, ref = _reload(tmp_path / "out", manifest), reference(mxfp4_dir)
    assert sorted(kept) == [0, 1, 2, 3] and (mode == "global" or {len(e) for e in kept.values()} == {3})
    for layer, experts in kept.items():
        ours, theirs = model.model.layers[layer].mlp, ref.model.layers[layer].mlp
        for name in ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"):
            assert torch.equal(getattr(ours.experts, name), getattr(theirs.experts, name)[experts]), name
        assert torch.equal(ours.router.weight, theirs.router.weight[experts])
    expected = _masked_logits(ref, kept)
    assert not torch.allclose(expected, _logits(reference(mxfp4_dir)), atol=1e-3)  # the dropped experts mattered
    torch.testing.assert_close(_logits(model), expected, atol=1e-5, rtol=0)
    _assert_notes(manifest, messages, tmp_path / "out")


@pytest.mark.parametrize(
    "stage",
    [
        {"method": "layer_drop", "drop": 1},
        {"method": "block_drop", "drop": 1},
        {"method": "block_drop", "mode": "consecutive", "drop": 2},
    ],
    ids=["layer_drop", "block_drop", "block_drop_consecutive"],
)
def test_layer_and_block_drop_reload_as_the_dequantized_model_decided(
    mxfp4_dir: Path, dequantized_dir: Path, tmp_path: Path, stage: dict[str, Any]
) -> None:
    manifest, messages = _compress(mxfp4_dir, [stage], tmp_path / "out")
    decisions = Decisions.from_json(manifest["decisions"])
    plain, _ = _compress(dequantized_dir, [stage], tmp_path / "plain")
    assert not decisions.is_empty() and manifest["decisions"] == plain["decisions"]
    assert manifest["stages"][0]["similarity"] == plain["stages"][0]["similarity"]
    ref = reference(mxfp4_dir)
    apply_decisions(ref, decisions, SafetensorsSource(mxfp4_dir).family.layout)
    torch.testing.assert_close(_logits(_reload(tmp_path / "out", manifest)), _logits(ref), atol=1e-5, rtol=0)
    _assert_notes(manifest, messages, tmp_path / "out")


@pytest.mark.parametrize(
    "stages",
    [
        [{"method": "rtn"}],
        [{"method": "wanda", "pattern": "2:4"}],
        [{"method": "layer_drop", "drop": 1}, {"method": "gptq"}],
    ],
    ids=lambda stages: "+".join(s["method"] for s in stages),
)
def test_slimming_dequantizes_mxfp4_experts_first_and_says_so(
    mxfp4_dir: Path, dequantized_dir: Path, tmp_path: Path, stages: list[dict[str, Any]]
) -> None:
    """Slimming an mxfp4 checkpoint writes what slimming its dequantized bf16 copy writes, tensor for tensor, with no
    mxfp4 ``quantization_config`` left behind; the manifest, the job's messages and the model card say so."""
    manifest, messages = _compress(mxfp4_dir, stages, tmp_path / "out")
    reference, _ = _compress(dequantized_dir, stages, tmp_path / "reference")
    got, want = _tensors(tmp_path / "out"), _tensors(tmp_path / "reference")
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=0, rtol=0, msg=name)
    quantization = json.loads((tmp_path / "out" / "config.json").read_text()).get("quantization_config")
    assert quantization == json.loads((tmp_path / "reference" / "config.json").read_text()).get("quantization_config")
    assert manifest["output"] == reference["output"]
    _assert_notes(manifest, messages, tmp_path / "out")


def _tensors(out: Path) -> dict[str, torch.Tensor]:
    return {name: t for path in sorted(out.glob("*.safetensors")) for name, t in load_file(path).items()}


def test_a_plain_gpt_oss_checkpoint_carries_no_note(tmp_path: Path, tiny_mixtral_dir: Path) -> None:
    source = tmp_path / "plain"
    tiny_model("gpt_oss", vocab_size=8192).save_pretrained(source)
    AutoTokenizer.from_pretrained(tiny_mixtral_dir).save_pretrained(source)
    manifest, _ = _compress(source, [], tmp_path / "out")
    assert "notes" not in manifest
    torch.testing.assert_close(
        _logits(_reload(tmp_path / "out", manifest)), decided_logits(source, Decisions(), ids=IDS), atol=0, rtol=0
    )


def test_the_plan_counts_mxfp4_experts_as_the_bf16_they_are_read_and_written_as(
    mxfp4_dir: Path, dequantized_dir: Path
) -> None:
    """The disk and memory plan of an mxfp4 checkpoint is that of its dequantized self: counted as stored (uint8
    blocks, 4.25 bits a weight) it would promise a quarter of the output the job writes."""
    stored, dequantized = model_sizes(mxfp4_dir), model_sizes(dequantized_dir)
    assert stored.item == dequantized.item == 2
    for got, want in zip(stored.layers, dequantized.layers, strict=True):
        assert got["routed_experts"] == want["routed_experts"]
    assert stored.weights == dequantized.weights


def test_evaluation_loads_the_mxfp4_checkpoint_as_transformers_does_and_says_how(mxfp4_dir: Path) -> None:
    """Without transformers' mxfp4 kernels (the kernels package and a hub download) the experts are dequantized
    to bf16 at load: the report's note says so, and that moecomp's packed runtime has no mxfp4 kernel."""
    loaded = load_checkpoint(mxfp4_dir, device="cpu", dtype="bfloat16")
    torch.testing.assert_close(_logits(loaded.model.float()), _logits(reference(mxfp4_dir)), atol=0, rtol=0)
    assert loaded.notes == [
        "mxfp4 checkpoint: transformers dequantized its experts to bf16 at load (its mxfp4 kernels need the kernels"
        " package and a hub download), so memory and speed are those of bf16 experts; moecomp's packed runtime has"
        " no mxfp4 kernel"
    ]
