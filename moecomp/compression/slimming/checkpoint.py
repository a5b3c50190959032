"""Writing a slimmed checkpoint one decoder layer at a time, in the names and format stock loaders read.

Names follow the family's checkpoints on disk (transformers applies its conversion mapping on load): fused
experts are written one tensor per expert, ``<experts>.<e>.<gate|up|down>.weight`` (gate and up are the two
halves of ``gate_up_proj`` along the output axis), with the family's disk renames applied (Mixtral's
``block_sparse_moe``, ``w1/w3/w2``). A quantized linear is written as compressed-tensors' ``pack-quantized``
triple (``weight_packed``, ``weight_scale``, ``weight_shape``) instead of ``weight``. Families whose stock
checkpoints hold input-major fused experts (gpt-oss, Llama 4: no per-expert names transformers would fuse) keep
them fused where they are not quantized; quantized ones are written per expert like the others, and the
checkpoint carries the code that fuses them back on load (:mod:`moecomp.compression.remote_code`). Layers are renumbered
densely when trimming removed blocks. The ``quantization_config`` is the one llm-compressor writes for the
same scheme: target regexes over the in-memory (linearized) names, routed experts first.
"""

from __future__ import annotations

from typing import Any

import compressed_tensors
import torch
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.export import ShardWriter
from moecomp.compression.methods.quantization import config_groups
from moecomp.compression.slimming.groups import LINEARIZED, WeightGroup
from moecomp.compression.slimming.qparams import pack
from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.targets import pattern_of

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def disk_name(name: str, family: MoEFamily) -> str:
    """Module-style full name -> the family's on-disk name."""
    for disk, module in family.disk.renames:
        name = name.replace(module, disk)
    return name


def _linear_tensors(prefix: str, weight: torch.Tensor, scale: torch.Tensor | None, args: Any) -> dict:
    """Tensors of one linear ``prefix``: its weight [out, in], or packed with ``scale`` [out, groups]."""
    if scale is None:
        return {f"{prefix}.weight": weight}
    return {f"{prefix}.{k}": v for k, v in pack(weight, scale, args).items()}


def layer_tensors(
    state: dict[str, torch.Tensor], prefix: str, slimmed: dict[str, tuple[WeightGroup, Slimmed]], family: MoEFamily
) -> dict[str, torch.Tensor]:
    """Disk tensors of one decoder layer from its state dict (names relative to the layer, ``prefix`` =
    ``model.layers.<new index>.``) and the slimming results of its weight groups (by ``WeightGroup.name``)."""
    out: dict[str, torch.Tensor] = {}
    fused_params = {f"{family.layout.experts}.{p}" for p in LINEARIZED}
    for name, tensor in state.items():
        result = slimmed[name][1] if name in slimmed else None
        if name in fused_params and (result is not None or not family.layout.experts_input_major):
            out.update(_fused_tensors(prefix, name, tensor, family, result))
        elif result is not None:  # a quantized linear: B = 1
            linear = disk_name(prefix + name.removesuffix(".weight"), family)
            out.update(_linear_tensors(linear, tensor, result.scale[0], result.args))  # type: ignore[index]
        else:
            out[disk_name(prefix + name, family)] = tensor
    return out


def _fused_tensors(prefix: str, name: str, tensor: torch.Tensor, family: MoEFamily, result: Slimmed | None) -> dict:
    """Per-expert linears of a fused [E, out, in] tensor, split along out into gate/up where fused.

    Packing runs once over the whole [E * out, in] tensor (rows are independent) and moves to the host in one
    copy; each expert's linear is then cut from it."""
    module, _, param = name.rpartition(".")
    tensor = family.layout.experts_output_major(param, tensor)
    disk = {"gate_proj": family.disk.gate, "up_proj": family.disk.up, "down_proj": family.disk.down}
    leaves = [disk[leaf] for leaf in LINEARIZED[param]]
    experts, out_rows, cols = tensor.shape
    rows = out_rows // len(leaves)
    if result is not None and result.scale is not None:
        flat = pack(tensor.reshape(experts * out_rows, cols), result.scale.reshape(experts * out_rows, -1), result.args)
        parts = {k: v.reshape(experts, out_rows, -1).cpu() for k, v in flat.items() if k != "weight_shape"}
        shape: list[int] | None = [rows, cols] if "weight_shape" in flat else None  # FP8 keeps ``weight``
    else:
        parts, shape = {"weight": tensor.cpu()}, None
    out: dict[str, torch.Tensor] = {}
    for e in range(experts):
        for i, leaf in enumerate(leaves):
            linear = disk_name(f"{prefix}{module}.{e}.{leaf}", family)
            # clones: safetensors refuses tensors that share memory
            out.update({f"{linear}.{k}": v[e, i * rows : (i + 1) * rows].clone() for k, v in parts.items()})
            if shape is not None:
                out[f"{linear}.weight_shape"] = torch.tensor(shape)
    return out


def write_layer(writer: ShardWriter, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Add a layer's tensors, floating ones cast to the checkpoint's dtype (scales included; FP8 weights stay FP8)."""
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu")
        cast = tensor.is_floating_point() and tensor.dtype not in FP8_DTYPES
        writer.add(name, tensor.to(dtype) if cast else tensor)


def linearized_names(layer_index: int, groups: list[tuple[WeightGroup, int]], family: MoEFamily) -> list[tuple]:
    """(in-memory linearized module name, scope, input width) of each linear a layer's groups stand for
    (``groups``: group and its input width); fused experts as ``<experts>.0.<gate_proj|up_proj|down_proj>``."""
    base = f"{family.layout.layers}.{layer_index}."
    names = []
    for group, width in groups:
        if group.fused:
            names += [(f"{base}{group.module}.0.{leaf}", group.scope, width) for leaf in LINEARIZED[group.param]]
        else:
            names.append((base + group.module, group.scope, width))
    return names


def quantization_config(config: Any, linears: list[tuple], ignore: list[str], actorder: str | None) -> dict[str, Any]:
    """The ``quantization_config`` of config.json, as llm-compressor writes it for the same scheme.

    ``linears``: (linearized name, scope, input width) of every quantized linear (see :func:`linearized_names`).
    """
    routed: dict[int, set[str]] = {}
    others: dict[int, set[str]] = {}
    for name, scope, width in linears:
        (routed if scope == "routed_experts" else others).setdefault(width, set()).add(pattern_of(name))
    groups = config_groups(config, _sorted(routed), _sorted(others))
    schemes = {}
    form = config.compressed_format
    for key, group in groups.items():
        weights = {**group["weights"], "observer": "memoryless_minmax", "actorder": actorder}
        inputs = group.get("input_activations")  # FP8: per-token scales at run time
        schemes[key] = QuantizationScheme(
            targets=group["targets"], weights=weights, input_activations=inputs, format=form
        )
    dumped = QuantizationConfig(
        config_groups=schemes, format=form, quantization_status="compressed", ignore=ignore
    ).model_dump(mode="json")
    return {**dumped, "sparsity_config": {}, "transform_config": {}, "version": compressed_tensors.__version__}


def _sorted(patterns: dict[int, set[str]]) -> dict[int, list[str]]:
    return {width: sorted(names) for width, names in patterns.items()}
