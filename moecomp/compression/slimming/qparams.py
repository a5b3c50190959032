"""Quantization parameters and packing, batched over [B, out, in], through llm-compressor and compressed-tensors.

Scales come from llm-compressor's weight observer (``memoryless_minmax``: per row and group of ``g`` input
columns, s = max|w| / 7.5 at 4 bits symmetric), run on the batch flattened to [B * out, in] (rows are
independent, so this is the per-linear result for every expert at once). Quantized integers and their packing
are compressed-tensors' own (``quantize``, ``PackedQuantizationCompressor``): the checkpoint holds exactly
what llm-compressor writes for the same weights and scales.
"""

from __future__ import annotations

import torch
from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, fake_quantize
from llmcompressor.observers import Observer

from moecomp.compression.methods.quantization import QuantizationStage


def quantization_args(
    config: QuantizationStage, group_size: int | None, actorder: str | None = None
) -> QuantizationArgs:
    """compressed-tensors ``QuantizationArgs`` of a stage's weights at ``group_size`` (FP8: per channel)."""
    return QuantizationArgs(**config.weight_scheme(group_size), actorder=actorder)


def observe_scales(
    weight: torch.Tensor, args: QuantizationArgs, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point), each [B, out, groups], of weight [B, out, in] (llm-compressor's weight observer).

    The scale is rounded to ``scale_dtype``, the checkpoint's: the pass then computes with exactly the scale that
    is saved (as llm-compressor does when it compresses at save time), whatever dtype it computes in."""
    batch, rows, _ = weight.shape
    observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=args)
    qparams = observer(weight.reshape(batch * rows, -1)).get_qparams()
    scale = qparams["scale"].to(scale_dtype).to(qparams["scale"].dtype)
    return scale.reshape(batch, rows, -1), qparams["zero_point"].reshape(batch, rows, -1)


def fake_quantized(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs):
    """Round-to-nearest Q(W) = s * clamp(round(W / s)), [B, out, in], in ``weight``'s dtype."""
    batch, rows, _ = weight.shape
    flat = fake_quantize(
        weight.reshape(batch * rows, -1), scale.reshape(batch * rows, -1), zero_point.reshape(batch * rows, -1), args
    )
    return flat.reshape(weight.shape)


def pack(weight: torch.Tensor, scale: torch.Tensor, args: QuantizationArgs) -> dict[str, torch.Tensor]:
    """One linear's checkpoint tensors from its quantized weight [out, in] and scale [out, groups]: integers in
    compressed-tensors' ``pack-quantized`` format (``weight_packed``, ``weight_scale``, ``weight_shape``), floats
    in its ``float-quantized`` format (``weight`` as float8_e4m3fn, ``weight_scale``)."""
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {"weight": weight, "weight_scale": scale, "weight_zero_point": torch.zeros_like(scale, dtype=torch.int8)}
    compressor = FloatQuantizationCompressor if args.type == "float" else PackedQuantizationCompressor
    return compressor.compress(state, scheme)
