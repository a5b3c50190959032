"""The model as bytes per decoder layer and part, read from the safetensors headers (no tensor is loaded), and what
each recipe stage does to those bytes as its config says (each stage's ``resized``; which layers or experts go is
only known after scoring).

Parts of a layer: attention, the MoE sub-layer (``moe_norm``, ``router``, ``shared_experts``, ``routed_experts``),
``dense_mlp`` and ``other``; tensors outside the layers are kept by name. A stage acts on them in order:
  expert_drop ``keep``   routed experts x keep / E in every MoE layer (global mode: the same on average)
  layer_drop ``drop``    the ``drop`` smallest MoE sub-layers removed (smallest: the estimate stays an upper bound)
  block_drop ``drop``    the ``drop`` smallest decoder blocks removed
  int quantization       weights of the scopes at bits/8 + s/g bytes each (s: a scale in the checkpoint's dtype,
                         g: the group; per channel g = the input width): 4-bit, g 128, bf16 is 0.26 of bf16
  fp8                    1 + 4/in bytes per weight;   pruning: stored dense, unchanged
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from moecomp.compression.adapters import MoEFamily, get_adapter
from moecomp.compression.lazy_checkpoint import INDEX_FILE, read_config
from moecomp.compression.sources import SIDE_FILES
from moecomp.compression.stored_quantization import StoredFormat, stored_format

FLOATS = {"F32": 4, "BF16": 2, "F16": 2}
MOE_PARTS = ("moe_norm", "router", "shared_experts", "routed_experts")
SCOPE_PART = {"routed_experts": "routed_experts", "shared_experts": "shared_experts", "attention": "attention"}
HEADER_BYTES = 256  # a tensor's entry in a safetensors header, rounded up
FILES_MARGIN = 2**20  # manifest, model card, bundled remote code
LABELS = {
    "routed_experts": "routed experts",
    "shared_experts": "shared experts",
    "router": "routers",
    "moe_norm": "MoE norms",
    "dense_mlp": "dense MLPs",
    "attention": "attention",
    "other": "other layer tensors",
}


@dataclass
class Linear:
    """Bytes of one part of one layer; ``numel``: its quantizable (2-D floating) weights, ``min_in`` the narrowest."""

    bytes: int = 0
    numel: int = 0
    min_in: int = 0
    tensors: int = 0  # quantizable ones

    def add(self, nbytes: int, numel: int, width: int) -> None:
        self.bytes, self.numel, self.tensors = self.bytes + nbytes, self.numel + numel, self.tensors + bool(numel)
        self.min_in = min(self.min_in, width) if self.min_in else width

    def scaled(self, factor: float) -> Linear:
        return Linear(int(self.bytes * factor), int(self.numel * factor), self.min_in, round(self.tensors * factor))


@dataclass
class Sizes:
    """The model as bytes: ``layers[i][part]``, ``outside`` the layers; ``moe[i]``: routed experts left in layer i."""

    layers: list[dict[str, Linear]]
    moe: list[int]
    outside: dict[str, int]
    item: int  # bytes of one element of the checkpoint's floating dtype
    files: int  # config, tokenizer and the other side files

    def layer_bytes(self, i: int, parts: tuple[str, ...] | None = None) -> int:
        return sum(p.bytes for k, p in self.layers[i].items() if parts is None or k in parts)

    @property
    def weights(self) -> int:
        return sum(self.layer_bytes(i) for i in range(len(self.layers))) + sum(self.outside.values())

    def with_experts(self, keep: int) -> Sizes:
        """Routed experts x keep / E in every MoE layer that has more than ``keep`` (expert drop)."""
        layers, moe = [dict(layer) for layer in self.layers], list(self.moe)
        for i, count in enumerate(moe):
            if count > keep and "routed_experts" in layers[i]:
                layers[i]["routed_experts"] = layers[i]["routed_experts"].scaled(keep / count)
                moe[i] = keep
        return replace(self, layers=layers, moe=moe)

    def without_moe(self, drop: int) -> Sizes:
        """The ``drop`` smallest MoE sub-layers removed (layer drop)."""
        return self._without_smallest(drop, MOE_PARTS)

    def without_blocks(self, drop: int) -> Sizes:
        """The ``drop`` smallest decoder blocks removed (block drop)."""
        return self._without_smallest(drop, None)

    def _without_smallest(self, drop: int, sub: tuple[str, ...] | None) -> Sizes:
        layers, moe = [dict(layer) for layer in self.layers], list(self.moe)
        candidates = [i for i in range(len(layers)) if moe[i] or (sub is None and layers[i])]
        for i in sorted(candidates, key=lambda i: self.layer_bytes(i, sub))[:drop]:
            layers[i] = {k: v for k, v in layers[i].items() if sub is not None and k not in sub}
            moe[i] = 0
        return replace(self, layers=layers, moe=moe)

    def quantized(self, scope: Sequence[str], packed: Callable[[int, int, int], int]) -> Sizes:
        """The parts in ``scope`` quantized: their weights take ``packed(numel, narrowest input, item)`` bytes (with
        their scales), and each weight becomes three tensors (packed, scale, shape)."""
        layers = [dict(layer) for layer in self.layers]
        for layer in layers:
            for part in scope:
                if part in layer:
                    linear = layer[part]
                    rest = linear.bytes - linear.numel * self.item + linear.tensors * (2 * HEADER_BYTES + 16)
                    weights = packed(linear.numel, linear.min_in, self.item)
                    layer[part] = replace(linear, bytes=max(weights + rest, 0))
        return replace(self, layers=layers)

    def checkpoint(self) -> dict[str, int]:
        """What a checkpoint of this model is made of."""
        parts: dict[str, int] = {}
        for layer in self.layers:
            for part, linear in layer.items():
                parts[LABELS[part]] = parts.get(LABELS[part], 0) + linear.bytes
        parts["embedding, head, final norm"] = sum(self.outside.values())
        parts["headers and files"] = self.files + FILES_MARGIN
        return parts


def read_headers(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Tensor name -> {dtype, shape, data_offsets} of every safetensors file of the checkpoint (headers only)."""
    index = model_dir / INDEX_FILE
    names = set(json.loads(index.read_text())["weight_map"].values()) if index.exists() else None
    tensors: dict[str, dict[str, Any]] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        if names is not None and path.name not in names:
            continue
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        tensors.update(header)
    return tensors


def _part(rel: str, family: MoEFamily, is_moe: bool) -> str:
    from moecomp.compression.slimming.targets import scope_of

    layout = family.layout
    scope = scope_of(rel, family)
    if scope is not None:
        return SCOPE_PART[scope]
    if rel.startswith(layout.post_attention_norm + "."):
        return "moe_norm" if is_moe else "other"
    if rel.startswith(layout.router + ".") or rel in dict(layout.expert_indexed):
        return "router"  # routing tensors: the router's and any other indexed by expert (correction biases)
    return "dense_mlp" if rel.startswith(layout.mlp + ".") else "other"


def model_sizes(model_dir: Path) -> Sizes:
    """The checkpoint's bytes by layer and part, from its headers and config."""
    config = read_config(model_dir)
    family = get_adapter(config)
    moe_layers = set(family.moe_layers(config))
    n = config.num_hidden_layers
    sizes = Sizes([{} for _ in range(n)], [family.num_experts(config) if i in moe_layers else 0 for i in range(n)],
                  {}, 2, sum(p.stat().st_size for p in _side_files(model_dir)))  # fmt: skip
    prefix = family.layout.layers + "."
    items = []
    for disk, info in _as_read(read_headers(model_dir), stored_format(config, family)).items():
        name = disk
        for old, new in family.disk.renames:
            name = name.replace(old, new)
        start, end = info["data_offsets"]
        nbytes, shape = end - start + HEADER_BYTES, info["shape"]
        if info["dtype"] in FLOATS:
            items.append(FLOATS[info["dtype"]])
        if not name.startswith(prefix):
            sizes.outside[name] = nbytes
            continue
        index, _, rel = name[len(prefix) :].partition(".")
        part = _part(rel, family, int(index) in moe_layers)
        quantizable = len(shape) >= 2 and part in SCOPE_PART.values() and info["dtype"] in FLOATS
        key = part if quantizable or part not in SCOPE_PART.values() else "other"
        numel = 1
        for d in shape:
            numel *= d
        width = shape[-1] if shape else 1
        sizes.layers[int(index)].setdefault(key, Linear()).add(nbytes, numel if quantizable else 0, width)
    sizes.item = max(set(items), key=items.count) if items else 2
    return sizes


def _as_read(headers: dict[str, dict[str, Any]], fmt: StoredFormat | None) -> dict[str, dict[str, Any]]:
    """The headers of the tensors as moecomp reads them: a tensor stored in parts (mxfp4 blocks and scales) is
    counted as the dequantized tensor it becomes, which is what the passes hold and the output stores."""
    if fmt is None:
        return headers
    out = dict(headers)
    dtype = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[fmt.dtype]
    for name, parts in fmt.parts(headers).items():
        shape = fmt.shape(*(out.pop(part)["shape"] for part in parts))
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [0, math.prod(shape) * FLOATS[dtype]]}
    return out


def _side_files(model_dir: Path) -> list[Path]:
    return [model_dir / n for n in ("config.json", *SIDE_FILES) if (model_dir / n).is_file()]


def resaved(sizes: Sizes, item: int) -> Sizes:
    """The model saved with ``item`` bytes per element instead of the checkpoint's (every tensor counted floating)."""
    factor = item / sizes.item
    layers = [{k: replace(v, bytes=int(v.bytes * factor)) for k, v in layer.items()} for layer in sizes.layers]
    return replace(sizes, layers=layers, outside={k: int(v * factor) for k, v in sizes.outside.items()}, item=item)
