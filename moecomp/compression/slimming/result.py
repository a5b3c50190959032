"""What a slimming method returns for one weight group."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from compressed_tensors.quantization import QuantizationArgs


@dataclass
class Slimmed:
    """The slimmed weight [B, out, in] (dequantized values for quantization), and for quantization the
    scales [B, out, groups] and args that pack it. ``fallbacks``: batch entries that had no calibration input
    (or an unusable Hessian) and got the data-free variant (round-to-nearest, magnitude pruning)."""

    weight: torch.Tensor
    scale: torch.Tensor | None = None
    args: QuantizationArgs | None = None
    fallbacks: list[int] = field(default_factory=list)
