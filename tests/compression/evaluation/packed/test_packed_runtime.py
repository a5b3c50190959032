"""The packed W4A16 runtime on a CPU: its plain-torch path against compressed-tensors and stock transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from transformers import AutoModelForCausalLM

from moecomp.compression.evaluation.packed import IMPLEMENTATION, W4A16Linear, load_packed
from moecomp.compression.evaluation.packed.modules import EXPERT_BUFFERS
from moecomp.compression.evaluation.packed.reference import dequantize, grouped_matmul, pack_int4, unpack_int4
from tests.compression.slimming_fixtures import heldout_ids

FAMILIES = ["mixtral", "qwen2_moe"]


def test_int4_words_are_compressed_tensors_pack_quantized() -> None:
    q = torch.randint(-8, 8, (48, 256), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    packed = pack_to_int32(q, 4)
    assert torch.equal(pack_int4(q), packed)
    assert torch.equal(unpack_int4(packed), q)
    assert torch.equal(unpack_from_int32(packed, 4, q.shape), q)


def test_grouped_matmul_is_one_dequantized_linear_per_routed_pair() -> None:
    gen = torch.Generator().manual_seed(0)
    experts, n, k, group, tokens, top_k = 4, 48, 256, 64, 5, 2
    packed = pack_int4(torch.randint(-8, 8, (experts, n, k), generator=gen))
    scale = (torch.rand(experts, n, k // group, generator=gen) / 50).to(torch.bfloat16)
    x = torch.randn(tokens, k, generator=gen).to(torch.bfloat16)
    ids = torch.randint(0, experts, (tokens * top_k,), generator=gen)
    got = grouped_matmul(x, ids, packed, scale, top_k)
    for p, e in enumerate(ids.tolist()):
        weight = unpack_int4(packed[e]).float() * scale[e].float().repeat_interleave(group, -1)
        want = x[p // top_k].float() @ weight.to(torch.bfloat16).float().T
        torch.testing.assert_close(got[p].float(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_logits_are_transformers_own_dequantized_forward(
    packed_checkpoints: dict[str, Path], family: str
) -> None:
    """Stock from_pretrained decompresses the same checkpoint to bf16; held-out logits agree to bf16 rounding."""
    path = packed_checkpoints[family]
    packed = load_packed(path)
    stock = AutoModelForCausalLM.from_pretrained(path).eval()
    assert packed.config._experts_implementation == IMPLEMENTATION and packed.dtype == stock.dtype == torch.bfloat16
    ids = heldout_ids(path, samples=8, seq_len=128)
    with torch.no_grad():
        got, want = packed(ids).logits.float(), stock(ids).logits.float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_experts_stay_packed_in_memory(packed_checkpoints: dict[str, Path], family: str) -> None:
    """Experts hold int4 words and scales only (< 0.4 of their bf16 bytes); the whole model is no larger than
    the checkpoint on disk."""
    path = packed_checkpoints[family]
    model = load_packed(path)
    experts = [m for m in model.modules() if hasattr(m, EXPERT_BUFFERS[0])]
    assert experts and all(not list(m.parameters()) for m in experts)
    packed_bytes = sum(b.numel() * b.element_size() for m in experts for b in m.buffers())
    dense_bytes = 0
    for m in experts:
        e, two_i, words = m.gate_up_packed.shape
        dense_bytes += 2 * e * (two_i * words * 8 + m.down_packed.shape[1] * m.down_packed.shape[2] * 8)
    assert packed_bytes < 0.4 * dense_bytes
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert model_bytes <= sum(f.stat().st_size for f in path.glob("*.safetensors"))
    assert any(isinstance(m, W4A16Linear) for m in model.modules())


@pytest.mark.slow
def test_dequantized_buffers_are_the_stock_models_weights(packed_checkpoints: dict[str, Path]) -> None:
    path = packed_checkpoints["qwen2_moe"]
    packed = load_packed(path)
    stock = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        stock(torch.zeros(1, 4, dtype=torch.long))  # compressed-tensors decompresses on the first forward
    weights = dict(stock.named_parameters())
    experts = packed.get_submodule("model.layers.0.mlp.experts")
    assert torch.equal(dequantize(experts.gate_up_packed, experts.gate_up_scale), weights[
        "model.layers.0.mlp.experts.gate_up_proj"])  # fmt: skip
    assert torch.equal(dequantize(experts.down_packed, experts.down_scale), weights[
        "model.layers.0.mlp.experts.down_proj"])  # fmt: skip
    q = packed.get_submodule("model.layers.0.self_attn.q_proj")
    assert torch.equal(dequantize(q.weight_packed, q.weight_scale), weights["model.layers.0.self_attn.q_proj.weight"])
