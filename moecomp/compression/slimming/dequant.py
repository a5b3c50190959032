"""Dequantizing quantized weights: ``s * (q - z)`` by compressed-tensors' own decompressors.

A checkpoint written by a slimming pass stores each quantized linear as ``<name>.weight_packed`` (int32, 32/b
values per word), ``weight_scale`` [out, in/g], ``weight_zero_point`` (asymmetric only) and ``weight_shape``; or,
for FP8, as ``<name>.weight`` (float8_e4m3fn) and ``weight_scale`` [out, 1].
:class:`moecomp.compression.lazy_checkpoint.SafetensorsSource` reads such a checkpoint through :func:`dequantize`,
so the engine's passes (trimming scores, the streamed reload check) see the weights the quantized model computes
with, without a dense copy on disk.
"""

from __future__ import annotations

from typing import Any

import torch
from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

PACKED_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def weight_args_of(config: dict[str, Any]) -> dict[str, Any]:
    """Bits, type and symmetry shared by every group this project writes (only group sizes differ)."""
    groups = [group["weights"] for group in config["config_groups"].values()]
    shared = {(g["num_bits"], g["type"], g["symmetric"]) for g in groups}
    if len(shared) != 1:
        raise ValueError(f"quantization groups differ in more than group size: {sorted(shared)}")
    bits, kind, symmetric = shared.pop()
    return {"num_bits": bits, "type": kind, "symmetric": symmetric}


def dequantize(parts: dict[str, torch.Tensor], base_args: dict[str, Any]) -> torch.Tensor:
    """[out, in] dense weight from one linear's packed tensors (the group size follows from the scale), or from
    its FP8 ``weight`` and per-channel ``weight_scale``."""
    if "weight_packed" not in parts:
        args = QuantizationArgs(**base_args, strategy="channel")
        scheme = QuantizationScheme(targets=["Linear"], weights=args)
        return FloatQuantizationCompressor.decompress(parts, scheme)["weight"]
    shape = parts["weight_shape"].tolist()
    group = shape[1] // parts["weight_scale"].shape[-1]
    args = QuantizationArgs(**base_args, strategy="group", group_size=group)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    return PackedQuantizationCompressor.decompress(parts, scheme)["weight"]
