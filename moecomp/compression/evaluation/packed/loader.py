"""Build a model from a pack-quantized (int4) or float-quantized (FP8) checkpoint with its weights kept as stored.

transformers' compressed-tensors integration decompresses every quantized linear to the model dtype at load, so
neither memory nor speed shows the quantization. Here the model is built on the meta device from the checkpoint's
config (quantization config removed), trimming already in the checkpoint is applied (moecomp's remote-code
checkpoints), and then, for a W4A16 checkpoint (int4 symmetric, pack-quantized):
  - each quantized nn.Linear becomes a :class:`W4A16Linear` holding ``weight_packed``/``weight_scale``, and an
    attention's q_proj, k_proj, v_proj one product (modules.fuse_siblings);
  - each MoE layer's experts keep ``gate_up_packed [E, 2I, H/8]`` (gate rows then up rows, as transformers
    fuses them), ``gate_up_scale [E, 2I, H/g]``, ``down_packed [E, H, I/8]``, ``down_scale [E, H, I/g]``;
for an FP8 one (float-quantized e4m3, one scale per output channel, as moecomp's FP8 stage writes it):
  - each quantized nn.Linear becomes an :class:`FP8Linear` (``weight_fp8``, ``weight_scale``; its input quantized
    per token where the scheme says so, as compressed-tensors does in stock transformers);
  - each MoE layer's experts keep ``gate_up_fp8 [E, 2I, H]``, ``gate_up_scale [E, 2I, 1]``, ``down_fp8 [E, H, I]``,
    ``down_scale [E, H, 1]``;
and every other tensor is read as stored and cast to ``dtype``.
Each tensor is read once from disk and copied once to ``device``; nothing dense is made of a quantized weight.
The experts implementation is set to "w4a16" or "fp8" (the only ones that can read those buffers).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.quantization import QuantizationArgs
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from moecomp.compression.adapters import MoEFamily, get_adapter
from moecomp.compression.evaluation.packed import fp8
from moecomp.compression.evaluation.packed.fp8 import FP8Linear
from moecomp.compression.evaluation.packed.modules import IMPLEMENTATION, W4A16Linear, fuse_siblings, pack_experts
from moecomp.compression.lazy_checkpoint import (
    INDEX_FILE,
    SINGLE_FILE,
    assign_tensors,
    checkpoint_structure,
    read_config,
)
from moecomp.compression.slimming.dequant import weight_args_of
from moecomp.compression.structure import apply_decisions, decoder_layers, interleave_halves

SUPPORTED = {"num_bits": 4, "type": "int", "symmetric": True}
NO_EXPERTS_INTERFACE = (
    "its experts run every token outside transformers' experts interface (Llama 4), where no packed kernel plugs in"
)
FP8_SUPPORTED = {"num_bits": 8, "type": "float", "symmetric": True}

# (disk tensors, a quantized linear's name, device, its bias, the quantization config) -> its serving module.
MakeLinear = Callable[["DiskTensors", str, torch.device, "torch.Tensor | None", dict], nn.Module]


@dataclass(frozen=True)
class PackedFormat:
    """How one checkpoint format's quantized linears are stored and served."""

    implementation: str  # the experts implementation that reads the buffers
    buffers: dict[str, str]  # a linear's disk suffix -> the experts buffers' suffix (gate_up_<...>, down_<...>)
    marker: str  # the disk suffix that only a quantized linear has
    make_linear: MakeLinear


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


def _quantization(config: Any) -> dict[str, Any]:
    quant = getattr(config, "quantization_config", None)
    return (quant.to_dict() if quant is not None and hasattr(quant, "to_dict") else quant) or {}


def packed_format(config: Any) -> PackedFormat:
    """The format load_packed serves the checkpoint of ``config`` in; ValueError for any it does not serve (only
    int4 symmetric pack-quantized and per-channel FP8 float-quantized, as moecomp's stages write them, of a family
    whose experts run behind transformers' experts interface)."""
    if get_adapter(config).layout.experts_call != "routed":
        raise ValueError(NO_EXPERTS_INTERFACE)
    quant = _quantization(config)
    if quant.get("format") == "pack-quantized":
        args = weight_args_of(quant)
        if args != SUPPORTED:
            raise ValueError(f"packed serving reads int4 symmetric weights only, not {args}")
        return W4A16
    if quant.get("format") == "float-quantized":
        args = weight_args_of(quant)
        strategies = {group["weights"].get("strategy") for group in quant["config_groups"].values()}
        if args != FP8_SUPPORTED or strategies != {"channel"}:
            raise ValueError(f"FP8 serving reads e4m3 weights with one scale per channel only, not {args} {strategies}")
        _fp8_input_args(quant)  # refuses static input scales before anything loads
        return FP8
    raise ValueError("neither pack-quantized nor float-quantized: nothing to keep as stored")


def _fp8_input_args(quant: dict[str, Any]) -> QuantizationArgs | None:
    """The scheme's input activations (one for every linear: moecomp writes one FP8 group), dynamic or none."""
    found = {json.dumps(group.get("input_activations"), sort_keys=True) for group in quant["config_groups"].values()}
    if len(found) != 1:
        raise ValueError("FP8 groups quantize their inputs differently: not served")
    inputs = json.loads(found.pop())
    if inputs is None:
        return None
    args = QuantizationArgs(**inputs)
    if not args.dynamic:
        raise ValueError("FP8 with static input scales is not served (moecomp's FP8 stage writes dynamic ones)")
    return args


def _w4a16_linear(disk: DiskTensors, name: str, device: torch.device, bias: torch.Tensor | None, _: dict) -> nn.Module:
    return W4A16Linear(disk.get(f"{name}.weight_packed").to(device), disk.get(f"{name}.weight_scale").to(device), bias)


def _fp8_linear(
    disk: DiskTensors, name: str, device: torch.device, bias: torch.Tensor | None, quant: dict
) -> nn.Module:
    weight, scale = disk.get(f"{name}.weight").to(device), disk.get(f"{name}.weight_scale").to(device)
    return FP8Linear(weight, scale, bias, _fp8_input_args(quant))


W4A16 = PackedFormat(
    IMPLEMENTATION, {"weight_packed": "packed", "weight_scale": "scale"}, "weight_packed", _w4a16_linear
)
FP8 = PackedFormat(fp8.IMPLEMENTATION, {"weight": "fp8", "weight_scale": "scale"}, "weight_scale", _fp8_linear)


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


def _experts_tensors(
    disk: DiskTensors, path: str, count: int, family: MoEFamily, fmt: PackedFormat, device: torch.device
) -> dict[str, torch.Tensor]:
    """The experts buffers of the experts module at ``path`` (``count`` experts on disk), named as ``fmt`` says:
    ``gate_up_<suffix> [E, 2I, ...]`` and ``down_<suffix> [E, H, ...]`` for each stored tensor of a linear."""
    gate, up, down = family.disk.gate, family.disk.up, family.disk.down
    out = {}
    for stored, suffix in fmt.buffers.items():
        gate_up = _stacked(disk, [[f"{path}.{e}.{p}.{stored}" for p in (gate, up)] for e in range(count)], device)
        # rows in the order the module's _apply_gate reads them: gate then up, or alternating (gpt-oss)
        out[f"gate_up_{suffix}"] = interleave_halves(gate_up) if family.layout.gate_up_interleaved else gate_up
        out[f"down_{suffix}"] = _stacked(disk, [[f"{path}.{e}.{down}.{stored}"] for e in range(count)], device)
    return out


def _pack_experts(
    model: nn.Module, disk: DiskTensors, family: MoEFamily, fmt: PackedFormat, device: torch.device
) -> int:
    """Packed buffers into every MoE layer whose experts the checkpoint holds quantized; returns how many."""
    layout, packed = family.layout, 0
    for i, layer in enumerate(decoder_layers(model, layout)):
        experts = _submodule(layer, layout.experts)
        path = f"{layout.layers}.{i}.{layout.experts}"
        if experts is None or f"{path}.0.{family.disk.gate}.{fmt.marker}" not in disk:
            continue
        count = getattr(experts, layout.expert_tensors[0]).shape[0]
        pack_experts(experts, _experts_tensors(disk, path, count, family, fmt, device))
        packed += 1
    return packed


def _pack_linears(
    model: nn.Module, disk: DiskTensors, fmt: PackedFormat, quant: dict, device: torch.device, dtype: torch.dtype
) -> int:
    """Every nn.Linear stored quantized becomes the format's linear (W4A16Linear, FP8Linear); returns how many."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and f"{n}.{fmt.marker}" in disk]
    for name in names:
        bias = disk.get(f"{name}.bias").to(device, dtype) if f"{name}.bias" in disk else None
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, fmt.make_linear(disk, name, device, bias, quant))
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
            if value.dtype == torch.float8_e4m3fn:  # cast to ``dtype`` without its scale it would be wrong
                raise ValueError(f"{name} is stored in FP8 in a module the packed runtime does not serve")
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
    """The model of a W4A16 or FP8 checkpoint with its quantized weights as stored on ``device``, experts served
    by "w4a16" or "fp8" (see :func:`packed_format`)."""
    model_dir, device = Path(model_dir), torch.device(device)
    config = read_config(model_dir)
    fmt, quant = packed_format(config), _quantization(config)
    family = get_adapter(config)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config).to(dtype)
    apply_decisions(model, checkpoint_structure(config, family), family.layout)
    with _checkpoint(model_dir, family) as disk:
        experts = _pack_experts(model, disk, family, fmt, device)
        if experts + _pack_linears(model, disk, fmt, quant, device, dtype) == 0:
            raise ValueError(f"{model_dir}: no quantized linear or experts found")
        _load_rest(model, disk, device, dtype)
    fuse_siblings(model)
    _rebuild_rotary(model, family, device)
    model.tie_weights()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(f"{model_dir}: the checkpoint lacks {missing[:5]} ({len(missing)} tensors)")
    if experts:  # experts left dense (a stage scoped to attention) keep transformers' implementation
        model.set_experts_implementation(fmt.implementation)
    return model.eval()
