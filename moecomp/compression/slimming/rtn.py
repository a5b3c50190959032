"""Round-to-nearest: Q(W) = s * clamp(round(W / s)), s from the group's max |w| (no data).

Batched over [B, out, in]; the reference is llm-compressor's ``QuantizationModifier`` (same observer, same
compressed-tensors rounding), compared in tests/compression/slimming/test_quantize.py.
"""

from __future__ import annotations

import torch

from moecomp.compression.slimming.qparams import fake_quantized, observe_scales, quantization_args
from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.statistics import InputStats


def slim(config: object, weight: torch.Tensor, stats: InputStats | None, group_size: int | None) -> Slimmed:
    args = quantization_args(config, group_size)
    scale, zero_point = observe_scales(weight, args)
    return Slimmed(fake_quantized(weight, scale, zero_point, args), scale, args)
