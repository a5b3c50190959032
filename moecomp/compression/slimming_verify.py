"""Checks on a slimmed model: routers untouched, the export reloads to the same logits, bytes on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.utils import get_execution_device
from torch import nn
from transformers import AutoModelForCausalLM

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.slimming_targets import router_names

# A reloaded export is refused when mean |logit difference| / mean |logit| exceeds this or fewer than
# MIN_AGREEMENT of the next-token argmaxes agree. An exact reload gives 0 / 1.0 in fp32; in bf16 the fused
# expert kernel alone rounds differently from per-expert linears (measured on tiny-mixtral: 0.013 / 0.97);
# experts reloaded at random are O(1) apart.
RELOAD_TOLERANCE = 0.05
MIN_AGREEMENT = 0.9


class ExportMismatch(RuntimeError):
    """The checkpoint written to disk does not reproduce the in-memory model."""


def router_state(model: nn.Module, family: MoEFamily) -> dict[str, str]:
    """sha256 of every router's (and shared-expert gate's) tensors: equal dicts mean bit-identical routers."""
    names = list(router_names(model, family).values())
    layers = model.get_submodule(family.layout.layers)
    for index in router_names(model, family):
        mlp = layers[index].get_submodule(family.layout.mlp)
        for path in family.shared_experts:
            module = mlp.get_submodule(path)
            if not list(module.children()):
                names.append(f"{family.layout.layers}.{index}.{family.layout.mlp}.{path}")
    digests: dict[str, str] = {}
    for name in names:
        for key, tensor in model.get_submodule(name).state_dict().items():
            raw = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
            digests[f"{name}.{key}"] = hashlib.sha256(raw).hexdigest()
    return digests


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    device = get_execution_device(model)
    return model(ids.to(device)).logits.float().cpu()


@torch.no_grad()
def verify_reload(out_dir: Path, model: nn.Module, calib_ids: torch.Tensor, rows: int = 2, tokens: int = 128) -> dict:
    """Reload ``out_dir`` with plain transformers and compare its logits with the in-memory model's."""
    ids = calib_ids[:rows, :tokens]
    expected = _logits(model, ids)
    device = get_execution_device(model)
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=model.dtype, device_map=str(device))
    got = _logits(reloaded, ids)
    del reloaded
    error = float((got - expected).abs().mean() / expected.abs().mean().clamp_min(1e-12))
    agreement = float((got.argmax(-1) == expected.argmax(-1)).float().mean())
    if error > RELOAD_TOLERANCE or agreement < MIN_AGREEMENT:
        raise ExportMismatch(
            f"the checkpoint in {out_dir} reloads to different logits (relative error {error:.3g} > "
            f"{RELOAD_TOLERANCE}, top-1 agreement {agreement:.3f}): weights were not matched on load"
        )
    return {"reload_relative_error": error, "reload_top1_agreement": agreement}


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def checkpoint_bytes(out_dir: Path, source_dir: Path) -> dict[str, Any]:
    """Bytes of the exported weights and of the source's, and how much smaller the export is."""
    written, source = _weights_bytes(out_dir), _weights_bytes(source_dir)
    return {
        "bytes_on_disk": sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
        "weights_bytes": written,
        "source_weights_bytes": source,
        "weights_ratio": round(written / source, 4) if source else None,
    }
