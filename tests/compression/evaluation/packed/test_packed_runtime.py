"""The packed W4A16 runtime on a CPU: its plain-torch path against compressed-tensors and stock transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from torch import nn
from transformers import AutoModelForCausalLM

from moecomp.compression.evaluation.packed import IMPLEMENTATION, W4A16Linear, load_packed
from moecomp.compression.evaluation.packed.modules import EXPERT_BUFFERS, FusedW4A16Linear, W4A16Sibling, fuse_siblings
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
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):  # q, k, v fused into one product, each its own rows
        linear = packed.get_submodule(f"model.layers.0.self_attn.{name}")
        assert torch.equal(linear.weight, weights[f"model.layers.0.self_attn.{name}.weight"])
    assert isinstance(packed.get_submodule("model.layers.0.self_attn.q_proj"), FusedW4A16Linear)


def _siblings(bias: bool) -> nn.Module:
    """An attention-like module with W4A16 q/k/v_proj of 64, 32, 32 outputs (group 32) and their call order."""
    gen = torch.Generator().manual_seed(0)

    def linear(n: int) -> W4A16Linear:
        packed = pack_int4(torch.randint(-8, 8, (n, 128), generator=gen))
        scale = (torch.rand(n, 4, generator=gen) / 50).to(torch.bfloat16)
        return W4A16Linear(packed, scale, torch.randn(n, generator=gen).to(torch.bfloat16) if bias else None)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = linear(64), linear(32), linear(32)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    return Attention()


@pytest.mark.parametrize("bias", [False, True])
def test_fused_siblings_give_each_linear_its_own_output_eager_and_compiled(bias: bool) -> None:
    attention = _siblings(bias)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    want = attention(x)
    assert fuse_siblings(attention) == 1 and isinstance(attention.k_proj, W4A16Sibling)
    assert [m.out_features for m in (attention.q_proj, attention.k_proj, attention.v_proj)] == [64, 32, 32]
    compiled = torch.compile(attention, backend="aot_eager", fullgraph=True)  # the keeping traces without a break
    for got in (attention(x), compiled(x)):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        assert attention.q_proj._kept is None  # nothing outlives the last sibling's call
    with pytest.raises(RuntimeError, match="sibling 1 called before the first"):
        attention.k_proj(x)
    attention.q_proj(x)
    with pytest.raises(RuntimeError, match="sibling 1 called before the first"):
        attention.k_proj(x.clone())  # another input than the first sibling's
