"""Build a model from a pack-quantized checkpoint with its int4 weights kept packed on the device.

transformers' compressed-tensors integration decompresses every int4 linear to the model dtype at load, so
neither memory nor speed shows the packing. Here the model is built on the meta device from the checkpoint's
config (quantization config removed), trimming already in the checkpoint is applied (moecomp's remote-code
checkpoints), and then:
  - each quantized nn.Linear becomes a :class:`W4A16Linear` holding ``weight_packed``/``weight_scale``;
  - each MoE layer's experts keep ``gate_up_packed [E, 2I, H/8]`` (gate rows then up rows, as transformers
    fuses them), ``gate_up_scale [E, 2I, H/g]``, ``down_packed [E, H, I/8]``, ``down_scale [E, H, I/g]``;
  - every other tensor is read as stored and cast to ``dtype``.
Each tensor is read once from disk and copied once to ``device``; nothing dense is made of a packed weight.
The experts implementation is set to "w4a16" (the only one that can read packed experts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from moecomp.compression.adapters import MoEFamily, get_adapter
from moecomp.compression.evaluation.packed.modules import IMPLEMENTATION, W4A16Linear, pack_experts
from moecomp.compression.lazy_checkpoint import (
    INDEX_FILE,
    SINGLE_FILE,
    assign_tensors,
    checkpoint_structure,
    read_config,
)
from moecomp.compression.slimming.dequant import weight_args_of
from moecomp.compression.structure import apply_decisions, decoder_layers

SUPPORTED = {"num_bits": 4, "type": "int", "symmetric": True}


class DiskTensors:
    """Tensors of a (possibly sharded) safetensors checkpoint by module-style name (family renames applied)."""

    def __init__(self, model_dir: Path, family: MoEFamily, stack: ExitStack) -> None:
        self.model_dir, self._stack = model_dir, stack
        self._handles: dict[str, Any] = {}
        index = model_dir / INDEX_FILE
        if index.exists():
            files = dict(json.loads(index.read_text())["weight_map"])
        else:
            with safe_open(str(model_dir / SINGLE_FILE), "pt", device="cpu") as handle:
                files = {name: SINGLE_FILE for name in handle.keys()}
        self._where: dict[str, tuple[str, str]] = {}  # module-style name -> (file, disk name)
        for disk, file in files.items():
            name = disk
            for old, new in family.disk.renames:
                name = name.replace(old, new)
            self._where[name] = (file, disk)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        file, disk = self._where[name]
        if file not in self._handles:
            self._handles[file] = self._stack.enter_context(safe_open(str(self.model_dir / file), "pt", device="cpu"))
        return self._handles[file].get_tensor(disk)


def pack_quantized_args(config: Any) -> dict[str, Any]:
    """Bits, type and symmetry of a pack-quantized checkpoint; ValueError for anything but int4 symmetric."""
    quant = getattr(config, "quantization_config", None)
    quant = quant.to_dict() if quant is not None and hasattr(quant, "to_dict") else quant
    if not quant or quant.get("format") != "pack-quantized":
        raise ValueError("not a pack-quantized checkpoint: nothing to keep packed")
    args = weight_args_of(quant)
    if args != SUPPORTED:
        raise ValueError(f"packed serving reads int4 symmetric weights only, not {args}")
    return args


def _stacked(disk: DiskTensors, names: list[list[str]], device: torch.device) -> torch.Tensor:
    """[E, sum of rows, cols]: for each expert its tensors concatenated along rows, copied straight to ``device``."""
    parts = [disk.get(names[0][0])]
    rows = sum(disk.get(n).shape[0] for n in names[0])
    out = torch.empty((len(names), rows, parts[0].shape[1]), dtype=parts[0].dtype, device=device)
    for e, expert_names in enumerate(names):
        start = 0
        for name in expert_names:
            part = disk.get(name)
            out[e, start : start + part.shape[0]].copy_(part)
            start += part.shape[0]
    return out


def _experts_tensors(disk: DiskTensors, path: str, count: int, family: MoEFamily, device: torch.device) -> dict:
    """The four packed experts buffers of the experts module at ``path`` (``count`` experts on disk)."""
    gate, up, down = family.disk.gate, family.disk.up, family.disk.down
    out = {}
    for suffix in ("packed", "scale"):
        gate_up = [[f"{path}.{e}.{p}.weight_{suffix}" for p in (gate, up)] for e in range(count)]
        out[f"gate_up_{suffix}"] = _stacked(disk, gate_up, device)  # [E, 2I, H/8 or H/g]
        out[f"down_{suffix}"] = _stacked(disk, [[f"{path}.{e}.{down}.weight_{suffix}"] for e in range(count)], device)
    return out


def _pack_experts(model: nn.Module, disk: DiskTensors, family: MoEFamily, device: torch.device) -> int:
    """Packed buffers into every MoE layer whose experts the checkpoint holds packed; returns how many."""
    layout, packed = family.layout, 0
    for i, layer in enumerate(decoder_layers(model, layout)):
        experts = _submodule(layer, layout.experts)
        path = f"{layout.layers}.{i}.{layout.experts}"
        if experts is None or f"{path}.0.{family.disk.gate}.weight_packed" not in disk:
            continue
        count = getattr(experts, layout.expert_tensors[0]).shape[0]
        pack_experts(experts, _experts_tensors(disk, path, count, family, device))
        packed += 1
    return packed


def _pack_linears(model: nn.Module, disk: DiskTensors, device: torch.device, dtype: torch.dtype) -> int:
    """Every nn.Linear stored as weight_packed becomes a W4A16Linear; returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and f"{n}.weight_packed" in disk]
    for name in names:
        bias = disk.get(f"{name}.bias").to(device, dtype) if f"{name}.bias" in disk else None
        linear = W4A16Linear(
            disk.get(f"{name}.weight_packed").to(device), disk.get(f"{name}.weight_scale").to(device), bias
        )
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, linear)
    return len(names)


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _load_rest(model: nn.Module, disk: DiskTensors, device: torch.device, dtype: torch.dtype) -> None:
    """Every tensor still on the meta device that the checkpoint holds, cast to ``dtype`` if floating."""
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_meta and name in disk:
            value = disk.get(name)
            assign_tensors(model, {name: value.to(device, dtype if value.is_floating_point() else None)})


def _rebuild_rotary(model: PreTrainedModel, family: MoEFamily, device: torch.device) -> None:
    """The rotary embedding's buffers are computed, not stored: build them again on ``device``."""
    rotary = _submodule(model, family.rotary_emb)
    if rotary is not None:
        parent, _, leaf = family.rotary_emb.rpartition(".")
        with torch.device(device):
            setattr(model.get_submodule(parent), leaf, type(rotary)(config=model.config))


@contextmanager
def _checkpoint(model_dir: Path, family: MoEFamily) -> Iterator[DiskTensors]:
    with ExitStack() as stack:
        yield DiskTensors(model_dir, family, stack)


def load_packed(
    model_dir: Path | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16
) -> PreTrainedModel:
    """The model of a pack-quantized checkpoint with int4 weights packed on ``device``, experts as "w4a16"."""
    model_dir, device = Path(model_dir), torch.device(device)
    config = read_config(model_dir)
    pack_quantized_args(config)
    family = get_adapter(config)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config).to(dtype)
    apply_decisions(model, checkpoint_structure(config, family), family.layout)
    with _checkpoint(model_dir, family) as disk:
        if _pack_experts(model, disk, family, device) + _pack_linears(model, disk, device, dtype) == 0:
            raise ValueError(f"{model_dir}: no packed linear or experts found")
        _load_rest(model, disk, device, dtype)
    _rebuild_rotary(model, family, device)
    model.tie_weights()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(f"{model_dir}: the checkpoint lacks {missing[:5]} ({len(missing)} tensors)")
    model.set_experts_implementation(IMPLEMENTATION)
    return model.eval()
