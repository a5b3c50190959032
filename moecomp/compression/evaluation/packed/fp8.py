"""FP8 experts and linears kept in float8_e4m3fn: the FP8 stage's checkpoints served without decompressing them.

moecomp's FP8 stage (methods.quantization.FP8Config) writes compressed-tensors' ``float-quantized`` format: each
quantized linear as ``weight`` float8_e4m3fn [out, in] and ``weight_scale`` [out, 1] in the checkpoint's dtype
(one scale per output channel), the scheme's input activations e4m3, dynamic, per token. The weight computed with is

    W[n, k] = round_s(float32(w[n, k]) * float32(scale[n]))      (round_s: to the scale's dtype, bf16 as saved)

which is what transformers 5.17 computes with: it decompresses fused experts at load to (w.float() * s.float())
in bf16, and compressed-tensors other linears to w.to(s.dtype) * s (the same bits: an e4m3 value times a bf16 one
is exact in float32, rounded once).

Activations: the target is stock transformers' forward of the same checkpoint, which
  - runs the experts on unquantized activations: it merges them into fused [E, out, in] tensors, which
    compressed-tensors does not wrap, whatever the scheme says. So do these (vLLM would quantize them per token);
  - quantizes the input of every other quantized linear (attention, shared experts) to e4m3 and back, per token
    (scale max|x_t| / 448) at every forward: :class:`FP8Linear` calls compressed-tensors' own functions for it.

Experts, per MoE layer (fused as transformers fuses them): ``gate_up_fp8 [E, 2I, H]`` (gate rows, then up rows),
``gate_up_scale [E, 2I, 1]``, ``down_fp8 [E, H, I]``, ``down_scale [E, H, 1]``, registered as "fp8". The product
over S routed pairs, out[p] = x[p // row_div] @ W[ids[p]].T, dequantizes only what it needs:
  - S < E (decode): the routed experts' weights are gathered and dequantized, [S, N, K], then one bmm: exactly
    transformers' batched_mm on the dequantized weights. Fixed shapes, no host sync: a CUDA graph captures it.
  - S >= E (prefill): every expert is dequantized once, [E, N, K], then the grouped GEMM the W4A16 prefill uses
    (:mod:`.grouped`): exactly transformers' grouped_mm. grouped_mm has no CUDA kernel outside bfloat16, so there
    float32/float16 take the gathered path (S dequantized experts at once: bfloat16 is what the GPU serves).
The switch sits where both dequantized copies weigh the same (S experts against E). Plain torch: dequantizing is
one cast and one multiply, which torch.compile fuses with the gather.
"""

from __future__ import annotations

from typing import Any

import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
from torch import nn
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from moecomp.compression.evaluation.packed.grouped import dense_grouped_matmul, grouped_mm_supported
from moecomp.compression.evaluation.packed.modules import routed_experts_forward

IMPLEMENTATION = "fp8"
EXPERT_BUFFERS = ("gate_up_fp8", "gate_up_scale", "down_fp8", "down_scale")


def dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W [..., N, K] in ``scale``'s dtype from ``weight [..., N, K]`` float8 and ``scale [..., N, 1]``.

    Multiplied in the scale's dtype, as compressed-tensors does: an e4m3 value is exact in bf16/fp16, and torch
    multiplies those in float32 and rounds once: the bits of the formula above, without the float32 copy of the
    weights (twice the size of the result) that the formula written out would make."""
    return weight.to(scale.dtype) * scale


def grouped_matmul(
    x: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, row_div: int
) -> torch.Tensor:
    """out [S, N] with out[p] = x[p // row_div] @ W[ids[p]].T; x [S / row_div, K], ids [S], weight [E, N, K]
    float8, scale [E, N, 1]."""
    if ids.shape[0] >= weight.shape[0] and grouped_mm_supported(x):
        return dense_grouped_matmul(x, ids, dequantize(weight, scale).to(x.dtype), row_div)
    routed = dequantize(weight[ids], scale[ids]).to(x.dtype)  # [S, N, K]
    rows = x.repeat_interleave(row_div, dim=0) if row_div > 1 else x  # [S, K]
    return torch.bmm(routed, rows.unsqueeze(-1)).squeeze(-1)


def fp8_experts_forward(
    self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """The "fp8" experts implementation: hidden_states [T, H], top_k_index/weights [T, k] -> [T, H]."""
    return routed_experts_forward(self, hidden_states, top_k_index, top_k_weights, grouped_matmul, "fp8")


ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, fp8_experts_forward)


class FP8Linear(nn.Module):
    """nn.Linear with an FP8 weight, ``weight_fp8 [out, in]`` float8_e4m3fn and ``weight_scale [out, 1]``; its
    input quantized to e4m3 and back as compressed-tensors does where the scheme says so (``input_args``)."""

    weight_fp8: torch.Tensor
    weight_scale: torch.Tensor
    bias: nn.Parameter | None

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        input_args: QuantizationArgs | None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_fp8", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.input_args = input_args

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_args is not None:  # compressed-tensors' forward_quantize for dynamic input activations
            scale, zero_point = compute_dynamic_scales_and_zp(value=x, args=self.input_args, module=self)
            x = fake_quantize(x, scale, zero_point, self.input_args)
        return nn.functional.linear(x, dequantize(self.weight_fp8, self.weight_scale).to(x.dtype), self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight stock transformers holds, dequantized on each read (see W4A16Linear.weight)."""
        return dequantize(self.weight_fp8, self.weight_scale)

    def extra_repr(self) -> str:
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{shape}, bias={self.bias is not None}, fp8_inputs={self.input_args is not None}"
