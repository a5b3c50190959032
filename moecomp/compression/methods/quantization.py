"""Expert Slimming by weight quantization (He et al. 2024, arXiv 2406.02500, Sec. 3.1), via llm-compressor.

Weights are quantized per group of ``g`` input columns (b bits, scale s, zero point z):

    Q(w) = s * (clamp(round(w / s) + z, 0, 2^b - 1) - z),   s = (max - min) / (2^b - 1)   (asymmetric)
                                                           s = max|w| / (2^(b-1) - 1), z = 0 (symmetric)

- ``rtn``: round-to-nearest, Q applied to W directly; no data.
- ``gptq`` (Frantar et al. 2022): quantize columns one at a time and push each column's error onto the
  columns not yet quantized through the inverse Hessian H = 2 X X^T of the layer's inputs:
  argmin_Q ||W X - Q X||^2.
- ``awq`` (Lin et al. 2023): per-input-channel scales s = mean|x|^a / mean|w|^(1-a), a grid-searched to
  minimise ||Q(W diag(s)) diag(s)^-1 X - W X||; diag(s)^-1 is folded into the preceding norm. In an MoE
  the post-attention norm also feeds the router, so the router's weight is multiplied by s as well
  (``preserve_routing``) and routing logits stay exactly what they were; the router is never quantized.
- ``fp8``: e4m3 weights per output channel, activations per token at run time (needs FP8 hardware).

Group size: 128 by default; a linear whose input width g does not divide gets the largest divisor of its
width below g (an expert 64 wide gets 64). All routed experts share one scheme, with the largest group size
dividing every expert width (Qwen2-MoE gate/up 128 wide and down 64 wide: 64 for all): transformers
dequantizes fused experts at load with a single scheme for every expert projection. Only symmetric
quantization (no zero point) is offered: transformers 5.17's loader of compressed-tensors MoE experts
drops ``weight_zero_point`` and cannot load asymmetric experts. Routers and shared-expert gates are
never quantized.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from moecomp.compression.methods.base import (
    BACKEND_DESCRIPTION,
    MAX_BLOCK_SIZE,
    MAX_GROUP_SIZE,
    Backend,
    SlimmingConfig,
    hessians,
)
from moecomp.compression.slimming.targets import SCOPES, Scope

if TYPE_CHECKING:
    from moecomp.compression.adapters import MoEFamily
    from moecomp.compression.planning import Setting
    from moecomp.compression.sizes import Sizes
    from moecomp.compression.slimming.targets import Target

QUANT_SCOPE_DEFAULT: list[Scope] = list(SCOPES)


class _QuantizationConfig(SlimmingConfig):
    quantizes: ClassVar[bool] = True
    compressed_format: ClassVar[str] = "pack-quantized"  # compressed-tensors' format of the saved weights
    scope: list[Scope] = Field(
        default_factory=lambda: list(QUANT_SCOPE_DEFAULT),
        max_length=len(SCOPES),
        description="Which linears to quantize; routed_experts is required. Routers are never quantized.",
    )

    @field_validator("scope")
    @classmethod
    def _routed_required(cls, value: list[Scope]) -> list[Scope]:
        if "routed_experts" not in value:
            raise ValueError("scope must include 'routed_experts' (expert slimming quantizes the experts)")
        return sorted(set(value), key=SCOPES.index)

    def resized(self, sizes: Sizes) -> Sizes:
        return sizes.quantized(self.scope, self.packed_bytes)

    def slimmer(self) -> Callable[..., Any]:
        from moecomp.compression.slimming import rtn  # round-to-nearest (AWQ's, after smoothing; FP8's: e4m3)

        return rtn.slim

    def packed_bytes(self, numel: int, min_in: int, item: int) -> int:
        """Bytes of ``numel`` quantized weights and their scales (``item`` bytes each), the narrowest input
        ``min_in`` wide."""
        raise NotImplementedError

    def weight_scheme(self, group_size: int | None) -> dict:
        """compressed-tensors ``QuantizationArgs`` fields of the weights, for linears of one group size."""
        raise NotImplementedError


class _IntQuantizationConfig(_QuantizationConfig):
    bits: Literal[4, 8] = Field(4, description="Weight bits.")
    group_size: int | None = Field(
        128, ge=1, le=MAX_GROUP_SIZE, description="Input columns per scale; none = one scale per output channel."
    )
    symmetric: bool = Field(True, description="Symmetric (no zero point); asymmetric experts cannot be reloaded.")

    def weight_scheme(self, group_size: int | None) -> dict:
        return weight_args(self, group_size)

    def packed_bytes(self, numel: int, min_in: int, item: int) -> int:
        """bits/8 per weight and one scale per group (per channel: the group is the input width)."""
        group = resolve_group_size(min_in, self.group_size) or min_in
        return numel * self.bits // 8 + item * numel // group

    @field_validator("symmetric")
    @classmethod
    def _symmetric_only(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "asymmetric (zero-point) quantization is refused: transformers 5.17 drops weight_zero_point when "
                "it loads compressed-tensors MoE experts, so the checkpoint would not reload; use symmetric"
            )
        return value


class GPTQConfig(_IntQuantizationConfig):
    uses_data: ClassVar[bool] = True
    actorder: ClassVar[str | None] = "static"
    method: Literal["gptq"] = "gptq"
    backend: Backend = Field("moecomp", description=BACKEND_DESCRIPTION)
    calibrate_all_experts: bool = Field(
        True,
        description="Every expert sees every calibration token while statistics are gathered "
        "(outputs still follow the router); off = an expert sees only its routed tokens.",
    )
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Added to H's diagonal, as a fraction of its mean.")
    block_size: int = Field(128, ge=1, le=MAX_BLOCK_SIZE, description="Columns quantized per GPTQ block.")

    def host_buffers(self, setting: Setting, before: Sizes, item: int) -> dict[str, int]:
        return hessians(setting, before)

    def slimmer(self) -> Callable[..., Any]:
        from moecomp.compression.slimming import gptq

        return gptq.slim

    def llmcompressor_modifiers(self, model: Any, family: MoEFamily, targets: list[Target]) -> list[Any]:
        from moecomp.compression.slimming.llmcompressor_modifiers import gptq_modifiers

        return gptq_modifiers(self, targets)


class AWQConfig(_IntQuantizationConfig):
    uses_data: ClassVar[bool] = True
    smooths: ClassVar[bool] = True
    method: Literal["awq"] = "awq"
    backend: Backend = Field("moecomp", description=BACKEND_DESCRIPTION)
    calibrate_all_experts: bool = True
    preserve_routing: bool = Field(
        True, description="Rescale the router (and shared-expert gate) with the norm so routing is unchanged."
    )
    n_grid: int = Field(20, ge=3, le=100, description="Grid points searched for the scale exponent a.")

    def host_buffers(self, setting: Setting, before: Sizes, item: int) -> dict[str, int]:
        """The scale search's float32 working copies, on the host when the pass runs on the CPU."""
        if setting.device.startswith("cuda"):
            return {}
        from moecomp.compression.slimming.awq import WORK_BYTES  # here: it imports llm-compressor

        return {"AWQ search": WORK_BYTES}

    def llmcompressor_modifiers(self, model: Any, family: MoEFamily, targets: list[Target]) -> list[Any]:
        from moecomp.compression.slimming.llmcompressor_modifiers import awq_modifiers

        return awq_modifiers(self, model, family, targets)


class RTNConfig(_IntQuantizationConfig):
    uses_data: ClassVar[bool] = False
    method: Literal["rtn"] = "rtn"
    backend: Backend = Field("moecomp", description=BACKEND_DESCRIPTION)

    def llmcompressor_modifiers(self, model: Any, family: MoEFamily, targets: list[Target]) -> list[Any]:
        from moecomp.compression.slimming.llmcompressor_modifiers import quantization_modifiers

        return quantization_modifiers(self, targets)


class FP8Config(_QuantizationConfig):
    uses_data: ClassVar[bool] = False
    compressed_format: ClassVar[str] = "float-quantized"
    method: Literal["fp8"] = "fp8"
    backend: Backend = Field("moecomp", description=BACKEND_DESCRIPTION)

    def packed_bytes(self, numel: int, min_in: int, item: int) -> int:
        """One byte per weight and a float32 scale per output channel."""
        return numel + 4 * numel // min_in

    def weight_scheme(self, group_size: int | None) -> dict:
        return fp8_weight_args()  # one scale per output channel, whatever the group size

    def check_device(self, device: str) -> None:
        require_fp8(device)  # an FP8 checkpoint is for FP8 hardware

    def llmcompressor_modifiers(self, model: Any, family: MoEFamily, targets: list[Target]) -> list[Any]:
        from moecomp.compression.slimming.llmcompressor_modifiers import quantization_modifiers

        return quantization_modifiers(self, targets)


QuantizationStage = GPTQConfig | AWQConfig | RTNConfig | FP8Config


def resolve_group_size(in_features: int, requested: int | None) -> int | None:
    """The group size used for a linear ``in_features`` wide: ``requested`` when it divides the width,
    else the largest divisor of the width below it; None (per channel) stays None."""
    if requested is None:
        return None
    size = min(requested, in_features)
    while in_features % size:
        size -= 1
    return size


def weight_args(config: _IntQuantizationConfig, group_size: int | None) -> dict:
    """compressed-tensors ``QuantizationArgs`` fields for the weights of one group-size class."""
    return {
        "num_bits": config.bits,
        "type": "int",
        "symmetric": config.symmetric,
        "strategy": "channel" if group_size is None else "group",
        "group_size": group_size,
    }


def expert_group_size(widths: list[int], requested: int | None) -> int | None:
    """One group size for every routed expert projection: the largest not above ``requested`` that
    divides all their input widths."""
    return resolve_group_size(math.gcd(*widths), requested) if widths else requested


def config_groups(
    config: QuantizationStage, routed: dict[int, list[str]], others: dict[int, list[str]]
) -> dict[str, dict]:
    """compressed-tensors schemes: routed experts first (one scheme), then one per input width of the rest.

    ``routed`` / ``others``: input width -> target regexes. Routed experts come first because transformers
    takes the first scheme whose regexes name experts to dequantize fused experts at load.
    """
    routed_targets = [p for group in routed.values() for p in group]
    if isinstance(config, FP8Config):
        targets = routed_targets + [p for group in others.values() for p in group]
        return {"group_0": {"targets": targets, "weights": fp8_weight_args(), "input_activations": fp8_input_args()}}
    by_size: dict[int | None, list[str]] = {}
    for width, names in sorted(others.items()):
        by_size.setdefault(resolve_group_size(width, config.group_size), []).extend(names)
    schemes = [(expert_group_size(sorted(routed), config.group_size), routed_targets), *by_size.items()]
    return {
        f"group_{i}": {"targets": targets, "weights": weight_args(config, size)}
        for i, (size, targets) in enumerate(schemes)
        if targets
    }


def fp8_weight_args() -> dict:
    """e4m3 weights, one scale per output channel (llm-compressor's FP8_DYNAMIC)."""
    return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}


def fp8_input_args() -> dict:
    """e4m3 activations, one scale per token computed at run time."""
    return {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}


def group_sizes_used(
    config: QuantizationStage, routed: dict[int, list[str]], others: dict[int, list[str]]
) -> dict[str, int | None]:
    """What got which group size (reported per stage): the routed experts, then other linears by width."""
    if isinstance(config, FP8Config):
        return {}
    sizes = {"routed_experts": expert_group_size(sorted(routed), config.group_size)}
    return sizes | {f"in_{width}": resolve_group_size(width, config.group_size) for width in sorted(others)}


def require_fp8(device: str) -> None:
    """FP8 weights need e4m3 support in hardware: CUDA compute capability 8.9+ (Ada, Hopper, Blackwell)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise ValueError(f"fp8 needs a CUDA GPU with FP8 support (compute capability >= 8.9); device is {device!r}")
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9):
        raise ValueError(f"fp8 needs compute capability >= 8.9; {device} has {major}.{minor}")
