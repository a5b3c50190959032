"""A dense view of a pack-quantized checkpoint, for passes that read plain weights (trimming scores).

A checkpoint written by the slimming pass stores each quantized linear as ``<name>.weight_packed``
(int32, 32/b values per word), ``weight_scale`` [out, in/g], ``weight_zero_point`` (asymmetric only,
packed along the output axis) and ``weight_shape``. :func:`dequantized_view` writes a copy in which each
such group is replaced by ``<name>.weight = s * (q - z)`` (compressed-tensors' own decompressor), in the
scale's dtype, with every other tensor and the tokenizer copied and ``quantization_config`` removed, so
that any reader of stock checkpoints (the trimming engine) sees the weights the quantized model computes
with. It costs one dense copy on disk; the quantized checkpoint itself is what gets exported.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from safetensors import safe_open
from safetensors.torch import save_file

PACKED_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")


def quantization_config(model_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's ``quantization_config`` (None for a plain checkpoint)."""
    return json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config")


def is_pack_quantized(model_dir: Path) -> bool:
    config = quantization_config(model_dir)
    return bool(config) and config.get("format") == "pack-quantized"  # type: ignore[union-attr]


def weight_args_of(config: dict[str, Any]) -> dict[str, Any]:
    """Bits, type and symmetry shared by every group this project writes (only group sizes differ)."""
    groups = [group["weights"] for group in config["config_groups"].values()]
    shared = {(g["num_bits"], g["type"], g["symmetric"]) for g in groups}
    if len(shared) != 1:
        raise ValueError(f"quantization groups differ in more than group size: {sorted(shared)}")
    bits, kind, symmetric = shared.pop()
    return {"num_bits": bits, "type": kind, "symmetric": symmetric}


def dequantize(parts: dict[str, torch.Tensor], base_args: dict[str, Any]) -> torch.Tensor:
    """[out, in] dense weight from one linear's packed tensors; the group size follows from the scale."""
    shape = parts["weight_shape"].tolist()
    group = shape[1] // parts["weight_scale"].shape[-1]
    args = QuantizationArgs(**base_args, strategy="group", group_size=group)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    return PackedQuantizationCompressor.decompress(parts, scheme)["weight"]


def _dense_file(source: Path, target: Path, base_args: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(source), "pt", device="cpu") as handle:
        names = list(handle.keys())
        bases = {n.rsplit(".", 1)[0] for n in names if n.endswith(".weight_packed")}
        for base in sorted(bases):
            parts = {s: handle.get_tensor(f"{base}.{s}") for s in PACKED_SUFFIXES if f"{base}.{s}" in names}
            tensors[f"{base}.weight"] = dequantize(parts, base_args)
        for name in names:
            base, _, leaf = name.rpartition(".")
            if base not in bases or leaf not in PACKED_SUFFIXES:  # biases of quantized linears stay
                tensors[name] = handle.get_tensor(name)
    save_file(tensors, str(target), metadata={"format": "pt"})


def dequantized_view(model_dir: Path, out_dir: Path) -> Path:
    """Write a dense copy of the pack-quantized checkpoint ``model_dir`` into ``out_dir``."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = json.loads((model_dir / "config.json").read_text())
    quant = config.pop("quantization_config")
    base_args = weight_args_of(quant)
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    for source in sorted(model_dir.glob("*.safetensors")):
        _dense_file(source, out_dir / source.name, base_args)
        with safe_open(str(out_dir / source.name), "pt") as handle:
            weight_map.update({name: source.name for name in handle.keys()})
    if (model_dir / "model.safetensors.index.json").exists():
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for path in model_dir.iterdir():
        if (
            path.is_file()
            and not path.name.endswith(".safetensors")
            and path.name
            not in {
                "config.json",
                "model.safetensors.index.json",
                "recipe.yaml",
            }
        ):
            shutil.copy2(path, out_dir / path.name)
    return out_dir


@contextlib.contextmanager
def scoring_view(model_dir: Path) -> Iterator[Path]:
    """``model_dir`` itself, or for a pack-quantized checkpoint a temporary dense copy beside it (removed after)."""
    model_dir = Path(model_dir)
    if not is_pack_quantized(model_dir):
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix=".moecomp-dense-", dir=model_dir.parent) as scratch:
        yield dequantized_view(model_dir, Path(scratch))
