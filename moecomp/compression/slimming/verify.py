"""The streamed reload check: the written checkpoint, read back one decoder layer at a time, must answer each
layer's probe sequence as the pass's slimmed layer did.

Packed weights are dequantized on read by compressed-tensors' own decompressor
(:class:`moecomp.compression.lazy_checkpoint.SafetensorsSource`), so this checks the packing, the names and the
config against an independent reader, never holding more than one layer. The error is relative on the layer's
residual update, mean |dy - dy_pass| / mean |dy_pass| with dy = layer(x) - x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moecomp.compression.activations import build_skeleton, layer_kwargs
from moecomp.compression.engine import load_layer
from moecomp.compression.lazy_checkpoint import SafetensorsSource
from moecomp.compression.structure import Decisions

# The pass computes with Q(W) in its compute dtype, the reader with s * q dequantized in the checkpoint's dtype:
# equal up to rounding (measured: < 1e-4 in float32, < 5e-3 in bf16). A misnamed or mis-packed tensor is O(1).
LAYER_TOLERANCE = 2e-2


class ExportMismatch(RuntimeError):
    """The checkpoint written to disk does not reproduce the pass's slimmed layers."""


@torch.no_grad()
def verify_streamed(
    out_dir: Path, probes: dict[int, tuple[torch.Tensor, torch.Tensor]], *, device: str, dtype: torch.dtype
) -> dict[str, Any]:
    source = SafetensorsSource(out_dir)
    torch_device = torch.device(device)
    model = build_skeleton(source, torch_device, dtype)
    seq_len = next(iter(probes.values()))[0].shape[1] if probes else 0
    kwargs = layer_kwargs(model, source.family, seq_len, torch_device) if probes else []
    errors: dict[int, float] = {}
    for index, (x, expected) in sorted(probes.items()):
        layer = load_layer(model, source, index, Decisions(), torch_device, dtype)
        x = x.to(torch_device, dtype)
        got = layer(x, **kwargs[index])
        got = got[0] if isinstance(got, tuple) else got
        want = expected.to(torch_device, dtype).float() - x.float()
        errors[index] = float((got.float() - x.float() - want).abs().mean() / want.abs().mean().clamp_min(1e-12))
        layer.to_empty(device="meta")
    worst = max(errors, key=errors.__getitem__, default=None)
    if worst is not None and errors[worst] > LAYER_TOLERANCE:
        bad = sum(e > LAYER_TOLERANCE for e in errors.values())
        raise ExportMismatch(
            f"the checkpoint in {out_dir} does not reproduce the slimmed model: {bad} of {len(errors)} layers answer "
            f"differently, worst layer {worst} (relative error {errors[worst]:.3g} > {LAYER_TOLERANCE})"
        )
    return {
        "reload_layers_checked": len(errors),
        "reload_worst_layer": worst,
        "reload_worst_layer_error": errors[worst] if worst is not None else None,
    }
