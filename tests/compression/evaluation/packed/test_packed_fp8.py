"""The FP8 packed runtime on a CPU: experts and linears kept in e4m3, against compressed-tensors, a per-pair loop and
stock transformers' forward of the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from transformers import AutoModelForCausalLM, PreTrainedModel

from moecomp.compression.evaluation.footprint import footprint
from moecomp.compression.evaluation.loading import load_checkpoint
from moecomp.compression.evaluation.packed import FP8Linear, fp8, load_packed
from moecomp.compression.evaluation.packed.loader import packed_format
from moecomp.compression.evaluation.served import served_experts, served_greedy
from moecomp.compression.evaluation.speed import EagerDecoder, greedy, random_prompt
from moecomp.compression.lazy_checkpoint import read_config
from tests.compression.slimming_fixtures import heldout_ids

FAMILIES = ["mixtral", "qwen2_moe"]


def _fp8_layer(experts: int, n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 weights [E, N, K] over their whole range and bf16 per-channel scales [E, N, 1]."""
    weight = (torch.randn(experts, n, k, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = (torch.rand(experts, n, 1, generator=gen) / 1000).to(torch.bfloat16)
    return weight, scale


def test_dequantize_is_compressed_tensors_float_decompression() -> None:
    weight, scale = _fp8_layer(1, 48, 64, torch.Generator().manual_seed(0))
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel")
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    parts = {"weight": weight[0], "weight_scale": scale[0]}
    want = FloatQuantizationCompressor.decompress(parts, scheme)["weight"]
    assert torch.equal(fp8.dequantize(weight[0], scale[0]), want)


@pytest.mark.parametrize("tokens", [1, 3, 40])  # pairs < E: gathered (decode); >= E: every expert dequantized
def test_grouped_matmul_is_one_dequantized_linear_per_routed_pair(tokens: int) -> None:
    gen = torch.Generator().manual_seed(tokens)
    experts, n, k, top_k = 8, 48, 64, 2
    weight, scale = _fp8_layer(experts, n, k, gen)
    x = torch.randn(tokens, k, generator=gen)
    ids = torch.randint(0, experts, (tokens * top_k,), generator=gen)
    got = fp8.grouped_matmul(x, ids, weight, scale, top_k)
    for p, e in enumerate(ids.tolist()):
        dense = weight[e].to(torch.float32) * scale[e].to(torch.float32)  # exact in float32
        want = x[p // top_k] @ dense.to(torch.bfloat16).float().T  # the weight as saved, rounded to the scale's dtype
        torch.testing.assert_close(got[p], want)  # float32: the sums differ only in order


def test_only_what_moecomps_fp8_stage_writes_is_served(fp8_checkpoints: dict[str, Path]) -> None:
    config = read_config(fp8_checkpoints["mixtral"])
    assert packed_format(config).implementation == "fp8"
    quant = config.quantization_config
    (group,) = quant["config_groups"].values()
    group["weights"]["strategy"] = "block"
    with pytest.raises(ValueError, match="one scale per channel"):
        packed_format(config)
    group["weights"]["strategy"] = "channel"
    group["input_activations"].update(strategy="tensor", dynamic=False)  # one calibrated input_scale per linear
    with pytest.raises(ValueError, match="static input scales"):
        packed_format(config)


def _stock(path: Path, dtype: torch.dtype, experts: str) -> PreTrainedModel:
    """Stock transformers' model of the checkpoint. In float32: transformers 5.17 dequantizes FP8 experts to bf16
    whatever ``dtype`` asks and refuses .float() on a quantized model, so it is loaded in bf16, run once (which
    decompresses the attention linears) and its now dense tensors cast, exactly, to float32."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    model = torch.nn.Module.float(model) if dtype == torch.float32 else model
    model.set_experts_implementation(experts)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_fp8_logits_are_transformers_own_forward(fp8_checkpoints: dict[str, Path], family: str, dtype) -> None:
    """The same bits: the dequantized weights are transformers' (rounded to bf16), the attention inputs quantized by
    compressed-tensors' own functions, the experts' products the same kernels on the same rows: grouped_mm for a
    prompt (pairs >= experts), batched_mm for a decode step (fewer pairs). Tolerance zero."""
    path = fp8_checkpoints[family]
    packed = load_packed(path, dtype=dtype)
    assert packed.config._experts_implementation == "fp8" and packed.dtype == dtype
    prompt, step = heldout_ids(path, samples=8, seq_len=128), heldout_ids(path, samples=1, seq_len=3)
    with torch.no_grad():
        assert torch.equal(packed(prompt).logits, _stock(path, dtype, "grouped_mm")(prompt).logits)
        assert torch.equal(packed(step).logits, _stock(path, dtype, "batched_mm")(step).logits)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_experts_and_linears_stay_fp8_in_memory(fp8_checkpoints: dict[str, Path], family: str) -> None:
    """Experts hold e4m3 buffers and scales, no parameter and no dense float expert tensor; experts and quantized
    linears weigh about half of stock transformers' (bf16), the whole model no more than its checkpoint on disk; the
    footprint counts the same parameters as stock's (the report's params, active params and FLOPs)."""
    path = fp8_checkpoints[family]
    model = load_packed(path)
    experts = [m for m in model.modules() if hasattr(m, fp8.EXPERT_BUFFERS[0])]
    assert experts and all(not list(m.parameters()) for m in experts)
    for m in experts:
        assert m.gate_up_fp8.dtype == m.down_fp8.dtype == torch.float8_e4m3fn
        assert m.gate_up_scale.shape[-1] == m.down_scale.shape[-1] == 1
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    dense = [n for n, t in tensors.items() if t.dim() == 3 and t.dtype != torch.float8_e4m3fn and t.shape[-1] > 1]
    assert not dense  # [E, out, in] only in e4m3; the scales are [E, out, 1]

    def nbytes(m: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])

    stock = _stock(path, torch.bfloat16, "grouped_mm")
    quantized = [n for n, m in model.named_modules() if isinstance(m, FP8Linear) or hasattr(m, "gate_up_fp8")]
    assert any(isinstance(model.get_submodule(n), FP8Linear) for n in quantized)
    ours, theirs = (sum(nbytes(m.get_submodule(n)) for n in quantized) for m in (model, stock))
    assert ours < 0.52 * theirs  # 1 byte a weight instead of 2, and one bf16 scale per output channel
    assert nbytes(model) <= sum(f.stat().st_size for f in path.glob("*.safetensors"))
    counted = footprint(model, path, 256)
    assert counted == footprint(stock, path, 256) and counted["params_active"] < counted["params_total"]


@pytest.mark.slow
def test_evaluation_serves_an_fp8_checkpoint_packed_and_decodes_its_eager_tokens(
    fp8_checkpoints: dict[str, Path],
) -> None:
    """What the report measures: load_checkpoint keeps FP8 on any device (plain torch), says so, and the served
    runtime keeps the "fp8" experts and decodes (static cache; on a CPU uncompiled) the eager tokens."""
    loaded = load_checkpoint(fp8_checkpoints["qwen2_moe"], dtype="float32")
    model = loaded.model
    assert any("FP8 checkpoint served packed" in note for note in loaded.notes)
    assert model.config._experts_implementation == served_experts(model) == "fp8"
    prompt = random_prompt(model, 2, 12, torch.device("cpu"))
    with torch.inference_mode():
        eager = greedy(EagerDecoder(model), prompt, 12)
    assert torch.equal(served_greedy(model, prompt, 12), eager)
