"""Weights one decoder layer at a time: from safetensors files on disk, or generated (benchmarks).

A :class:`WeightSource` hands the engine the tensors of the embedding and of one decoder layer,
never the whole model. :class:`SafetensorsSource` reads only the names it needs with
``safe_open`` (sharded checkpoints through ``model.safetensors.index.json``) and fuses per-expert
tensors on the fly: ``gate_up_proj[e] = cat(gate[e], up[e])`` (output axis), ``down_proj[e] = down[e]``.
When a layer keeps only some experts, only those experts are read. Tensors stored in a format the family reads
dequantized (gpt-oss's mxfp4 experts, :mod:`moecomp.compression.stored_quantization`) are decoded as they are read,
kept experts only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from moecomp.compression.adapters import MoEFamily, get_adapter
from moecomp.compression.adapters.family import quant_method
from moecomp.compression.stored_quantization import read_decoded, stored_format, without_quantization
from moecomp.compression.structure import Decisions

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Fused module tensor -> the per-expert disk projections concatenated (in order) along the output axis.
FUSED_FROM = {"gate_up_proj": ("gate", "up"), "down_proj": ("down",)}


class WeightSource(Protocol):
    """Where the engine gets weights; ``module_tensors`` returns exactly the names asked for.

    A source may also carry ``structure`` (:class:`Decisions`): trimming already in the checkpoint.
    """

    config: PretrainedConfig
    family: MoEFamily

    def module_tensors(
        self, prefix: str, names: list[str], kept: list[int] | None, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]: ...


def layer_prefix(family: MoEFamily, idx: int) -> str:
    return f"{family.layout.layers}.{idx}."


class SafetensorsSource:
    """Read tensors by module name from a (possibly sharded) safetensors checkpoint."""

    supports_prefetch = True  # reading is I/O: worth doing on a thread while the previous layer runs

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.config = read_config(self.model_dir)
        self.family = get_adapter(self.config)
        self.structure = checkpoint_structure(self.config, self.family)  # of a trimmed moecomp checkpoint
        # A format the family reads dequantized (gpt-oss's mxfp4 experts): the model built from the config is the
        # dequantized one, and each stored tensor is decoded as its layer is read.
        self.stored = stored_format(self.config, self.family)
        if self.stored is not None:
            without_quantization(self.config)
        self._packed_args = _packed_weight_args(self.config)  # pack-quantized: weights are dequantized on read
        if getattr(self.config, "quantization_config", None) and self._packed_args is None:
            # Scores need the real weights; FP8 tensors would be read as if they were plain.
            raise ValueError(
                f"{self.model_dir} is a quantized checkpoint ({quant_method(self.config)}); trimming calibration "
                "reads unquantized weights: run trimming stages before quantization stages"
            )
        self._files = _weight_map(self.model_dir)  # module-style name -> file
        self._disk_names = _renamed(self._files, self.family)  # module-style name -> disk name
        self._stored_parts = self.stored.parts(self._disk_names) if self.stored else {}  # name -> stored parts

    def module_tensors(
        self,
        prefix: str,
        names: list[str],
        kept: list[int] | None,
        device: torch.device,
        dtype: torch.dtype,
        pin: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Tensors ``prefix + name`` for each name (module numbering), experts restricted to ``kept``.

        ``pin``: host tensors in pinned memory (``device`` cpu), for asynchronous copies to a GPU.
        """
        pin = pin and device.type == "cpu"
        with ExitStack() as stack:
            handles: dict[str, Any] = {}

            def raw(name: str) -> torch.Tensor:
                disk = self._disk_names[name]
                path = self._files[name]
                if path not in handles:
                    handles[path] = stack.enter_context(safe_open(str(self.model_dir / path), "pt", device="cpu"))
                return handles[path].get_tensor(disk)

            def read(name: str) -> torch.Tensor:
                if self._packed_args is not None and self._is_quantized(name):
                    return self._dequantized(name, raw, device)
                return raw(name)

            return {name: self._one(prefix + name, kept, read, device, dtype, pin) for name in names}

    def _is_quantized(self, name: str) -> bool:
        """A linear's weight stored packed (no ``weight`` on disk) or as FP8 beside its scale."""
        base = name.removesuffix(".weight")
        return name.endswith(".weight") and (name not in self._disk_names or f"{base}.weight_scale" in self._disk_names)

    def _dequantized(self, name: str, read: Any, device: torch.device) -> torch.Tensor:
        """A quantized linear's weight s * q, by compressed-tensors' own decompressors (on ``device``)."""
        assert self._packed_args is not None  # only quantized checkpoints hold quantized weights
        from moecomp.compression.slimming.dequant import PACKED_SUFFIXES, dequantize

        base = name.removesuffix(".weight")
        suffixes = (*PACKED_SUFFIXES, "weight")
        parts = {s: read(f"{base}.{s}") for s in suffixes if f"{base}.{s}" in self._disk_names}
        parts = {k: v if k == "weight_shape" else v.to(device) for k, v in parts.items()}
        return dequantize(parts, self._packed_args)

    def has(self, name: str) -> bool:
        packed = name.removesuffix("weight") + "weight_packed"
        return name in self._disk_names or packed in self._disk_names or name in self._stored_parts

    def _one(
        self, full: str, kept: list[int] | None, read: Any, device: torch.device, dtype: torch.dtype, pin: bool
    ) -> torch.Tensor:
        if full in self._stored_parts:
            assert self.stored is not None  # only a checkpoint in a stored format has stored parts
            tensor = read_decoded(self.stored, read, self._stored_parts[full], kept, device)
            tensor = tensor.to(dtype=dtype)
            return tensor.pin_memory() if pin else tensor
        parent, _, leaf = full.rpartition(".")
        fused = parent.endswith("." + self.family.layout.experts) and leaf in FUSED_FROM
        if not fused or self.has(full):
            tensor = read(full)
            axis = 0 if fused else self._expert_axis(full)
            if kept is not None and axis is not None:
                tensor = tensor.index_select(axis, torch.tensor(kept))
            tensor = tensor.to(device=device, dtype=dtype, non_blocking=True)
            return tensor.pin_memory() if pin else tensor
        return self._fuse(parent, leaf, kept, read, device, dtype, pin)

    def _fuse(
        self,
        parent: str,
        leaf: str,
        kept: list[int] | None,
        read: Any,
        device: torch.device,
        dtype: torch.dtype,
        pin: bool,
    ) -> torch.Tensor:
        """The fused tensor from per-expert ones, each copied once straight into its slice of [E, out, in] on the
        device (then in the module's own layout: ``ModuleLayout.experts_stored``)."""
        experts = kept if kept is not None else list(range(self._count_experts(parent)))
        names = [getattr(self.family.disk, p) for p in FUSED_FROM[leaf]]
        out: torch.Tensor | None = None
        for i, e in enumerate(experts):
            row = 0
            for name in names:
                part = read(f"{parent}.{e}.{name}.weight")  # [rows, in]
                if out is None:
                    out = torch.empty(
                        (len(experts), part.shape[0] * len(names), part.shape[1]), device=device, dtype=dtype
                    )
                out[i, row : row + part.shape[0]].copy_(part)
                row += part.shape[0]
        if out is None:
            raise ValueError(f"no experts to read under {parent}")
        return self.family.layout.experts_stored(leaf, out).contiguous()

    def _expert_axis(self, full: str) -> int | None:
        """The expert axis of a per-expert tensor (router rows, correction biases); None for any other."""
        layout = self.family.layout
        rel = full.split(".", layout.layers.count(".") + 2)[-1]  # the path from the decoder layer
        return layout.per_expert_tensors().get(rel)

    def _count_experts(self, experts_path: str) -> int:
        layer = int(experts_path.removeprefix(self.family.layout.layers + ".").split(".")[0])
        kept = self.structure.kept_experts.get(layer)
        return len(kept) if kept is not None else self.family.num_experts(self.config)


# Keys a trimmed checkpoint with bundled remote code carries (moecomp.compression.export): the stock
# model type, the routed experts of each MoE layer (new numbering) and the MoE sub-layers removed.
BASE_MODEL_TYPE_KEY = "moecomp_base_model_type"
EXPERTS_PER_LAYER_KEY = "moecomp_experts_per_layer"
DROPPED_MOE_LAYERS_KEY = "moecomp_dropped_moe_layers"


def read_config(model_dir: Path) -> PretrainedConfig:
    """The checkpoint's config; a moecomp remote-code checkpoint is read as its stock family, no code run."""
    data = json.loads((model_dir / "config.json").read_text())
    base = data.get(BASE_MODEL_TYPE_KEY)
    if base is None:
        return AutoConfig.from_pretrained(model_dir)
    values = {k: v for k, v in data.items() if k not in ("model_type", "auto_map", "architectures")}
    return AutoConfig.for_model(base, **values)


def checkpoint_structure(config: PretrainedConfig, family: MoEFamily) -> Decisions:
    """The trimming already in a checkpoint (its own numbering; experts 0..k-1); empty for stock ones."""
    total = family.num_experts(config)
    per_layer = {int(k): int(v) for k, v in (getattr(config, EXPERTS_PER_LAYER_KEY, None) or {}).items()}
    return Decisions(
        kept_experts={layer: list(range(count)) for layer, count in per_layer.items() if count < total},
        dropped_layers=list(getattr(config, DROPPED_MOE_LAYERS_KEY, None) or []),
    )


def _packed_weight_args(config: PretrainedConfig) -> dict[str, Any] | None:
    """Bits, type and symmetry of a checkpoint's quantized weights (pack- or float-quantized, as slimming writes
    them); None for any other checkpoint."""
    quant = getattr(config, "quantization_config", None)
    quant = quant.to_dict() if quant is not None and hasattr(quant, "to_dict") else quant
    if not quant or quant.get("format") not in ("pack-quantized", "float-quantized"):
        return None
    from moecomp.compression.slimming.dequant import weight_args_of  # compressed-tensors: only when quantized

    return weight_args_of(quant)


def _weight_map(model_dir: Path) -> dict[str, str]:
    """Disk tensor name -> file name, for a single file or a sharded checkpoint."""
    index = model_dir / INDEX_FILE
    if index.exists():
        return dict(json.loads(index.read_text())["weight_map"])
    single = model_dir / SINGLE_FILE
    if not single.exists():
        raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}")
    with safe_open(str(single), "pt", device="cpu") as handle:
        return {name: SINGLE_FILE for name in handle.keys()}


def _renamed(files: dict[str, str], family: MoEFamily) -> dict[str, str]:
    """Module-style name -> disk name (applying the family's renames); rewrites ``files`` keys too."""
    mapping: dict[str, str] = {}
    for disk in list(files):
        name = disk
        for old, new in family.disk.renames:
            name = name.replace(old, new)
        mapping[name] = disk
        files[name] = files[disk]
    return mapping


def assign_tensors(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a (meta) module's parameters and buffers by ``tensors`` (names relative to the module)."""
    for name, tensor in tensors.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        old = getattr(parent, leaf)
        if isinstance(old, nn.Parameter):
            setattr(parent, leaf, nn.Parameter(tensor, requires_grad=False))
        else:
            parent._buffers[leaf] = tensor


def state_names(module: nn.Module) -> list[str]:
    """Names of every parameter and persistent buffer (what a checkpoint holds for this module)."""
    return list(module.state_dict(keep_vars=True).keys())


def iter_meta_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.state_dict(keep_vars=True).items()
