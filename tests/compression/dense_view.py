"""A dense copy of a pack-quantized checkpoint: the reference the tests compare the on-read dequantization with.

Each packed group becomes ``<name>.weight = s * (q - z)`` (compressed-tensors' decompressor, in the scale's dtype);
every other tensor and the tokenizer are copied and ``quantization_config`` is removed, so stock transformers
loads it as the dense model the quantized one stands for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moecomp.compression.slimming.dequant import PACKED_SUFFIXES, dequantize, weight_args_of


def is_pack_quantized(model_dir: Path) -> bool:
    config = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config")
    return bool(config) and config.get("format") == "pack-quantized"


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
