"""Round-to-nearest: Q(W) = s * clamp(round(W / s)), s from the group's max |w| (no data).

Batched over [B, out, in]; the reference is llm-compressor's ``QuantizationModifier`` (same observer, same
compressed-tensors rounding), compared in tests/compression/slimming/. W / s is computed in the checkpoint's dtype,
as llm-compressor does when it compresses at save time, so the integers are its integers whatever dtype the pass
computes in.
"""

from __future__ import annotations

import torch

from moecomp.compression.methods.quantization import QuantizationStage
from moecomp.compression.slimming.qparams import fake_quantized, observe_scales, quantization_args
from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.statistics import InputStats


def slim(
    config: QuantizationStage,
    weight: torch.Tensor,
    stats: InputStats | None,
    group_size: int | None,
    scale_dtype: torch.dtype,
) -> Slimmed:
    args = quantization_args(config, group_size)
    scale, zero_point = observe_scales(weight, args, scale_dtype)
    stored = fake_quantized(weight.to(scale_dtype), scale.to(scale_dtype), zero_point, args)
    return Slimmed(stored.to(weight.dtype), scale, args)
