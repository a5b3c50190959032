"""Write a trimmed checkpoint: stream tensors from the source, drop/renumber/slice them per the Decisions.

Memory: one source tensor plus one output shard (at most ``max_shard_bytes``) at a time; the model
is never materialised (config bookkeeping runs on a ``meta`` skeleton with the engine's own
:func:`structure.apply_decisions`, so the written config is exactly what the in-memory model has).

Tensor names keep the source's on-disk convention (per-expert ``experts.<e>.*`` or fused
``experts.<tensor>`` with the expert on axis 0), so the stock checkpoint conversion still applies
when transformers loads the result. Layers and experts are renumbered densely in original order. Tensors stored
in a format the family reads dequantized (gpt-oss's mxfp4 experts) are written decoded, and the config loses its
``quantization_config``: the result is a plain checkpoint, and its manifest's ``notes`` say so.

Loading: equal expert counts in every MoE layer and no removed MoE sub-layer -> a STOCK checkpoint
(``AutoModelForCausalLM.from_pretrained(dir)``). Otherwise the checkpoint carries its own modeling
code (see :mod:`moecomp.compression.remote_code`) and loads with ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from moecomp.compression.adapters import MoEFamily, get_adapter
from moecomp.compression.context import RunContext
from moecomp.compression.lazy_checkpoint import read_config
from moecomp.compression.manifest import write_manifest
from moecomp.compression.remote_code import write_remote_code
from moecomp.compression.sources import SIDE_FILES
from moecomp.compression.stored_quantization import StoredFormat, read_decoded, stored_format, without_quantization
from moecomp.compression.structure import Decisions, DroppedMLP, apply_decisions, decoder_layers, expert_counts

MAX_SHARD_BYTES = 2 * 1024**3
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorPlan:
    """What one source tensor becomes: its output name and, for per-expert tensors, the experts kept (on ``axis``)."""

    out_name: str
    rows: list[int] | None = None
    axis: int = 0


@dataclass
class TrimmedShape:
    """The trimmed model's structure, in the NEW numbering."""

    config: Any  # the edited transformers config
    experts_per_layer: dict[int, int]  # MoE layer -> routed experts
    dropped_moe_layers: list[int]

    @property
    def stock(self) -> bool:
        return not self.dropped_moe_layers and len(set(self.experts_per_layer.values())) <= 1


def source_config(source_dir: Path) -> tuple[Any, StoredFormat | None]:
    """The source's config as the exported model has it, and the format its weights are read dequantized from
    (None for a plain checkpoint): a dequantized checkpoint's config carries no ``quantization_config``."""
    config = read_config(source_dir)  # a checkpoint with bundled code (a quantized gpt-oss) as its stock family
    stored = stored_format(config, get_adapter(config))
    return (without_quantization(config) if stored else config), stored


def trimmed_shape(source_dir: Path, decisions: Decisions) -> TrimmedShape:
    """Apply the decisions to a meta-device skeleton and read off the resulting config and structure."""
    config, _ = source_config(source_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layout = get_adapter(config).layout
    apply_decisions(model, decisions, layout)
    layers = decoder_layers(model, layout)
    dropped = [i for i, layer in enumerate(layers) if isinstance(layer.get_submodule(layout.mlp), DroppedMLP)]
    return TrimmedShape(model.config, expert_counts(model, layout), dropped)


def layer_of(name: str, family: MoEFamily) -> int | None:
    match = re.match(rf"^{re.escape(family.layout.layers)}\.(\d+)\.", name)
    return int(match[1]) if match else None


def _module_name(name: str, family: MoEFamily) -> str:
    for disk, module in family.disk.renames:
        name = name.replace(disk, module)
    return name


def _under(rest: str, paths: tuple[str, ...]) -> bool:
    return any(rest == p or rest.startswith(p + ".") for p in paths)


def plan_tensor(name: str, decisions: Decisions, family: MoEFamily, new_index: dict[int, int]) -> TensorPlan | None:
    """Where a source tensor goes (None: it is removed). ``new_index`` maps kept original layers to new ones."""
    layout = family.layout
    layer = layer_of(name, family)
    if layer is None:
        return TensorPlan(name)  # embeddings, final norm, lm_head
    if layer not in new_index:
        return None  # a dropped block
    rest = _module_name(name, family).split(".", layout.layers.count(".") + 2)[-1]
    out = re.sub(rf"^({re.escape(layout.layers)})\.{layer}\.", rf"\g<1>.{new_index[layer]}.", name, count=1)
    if layer in decisions.dropped_layers and _under(rest, (layout.post_attention_norm, layout.mlp)):
        return None
    kept = decisions.kept_experts.get(layer)
    if kept is None:
        return TensorPlan(out)
    per_expert = re.match(rf"^{re.escape(layout.experts)}\.(\d+)\.", rest)
    if per_expert:
        expert = int(per_expert[1])
        if expert not in kept:
            return None
        leaf = layout.experts.rsplit(".", 1)[-1]
        prefix = re.escape(f"{layout.layers}.{new_index[layer]}.")
        out = re.sub(rf"^({prefix}.*\.{leaf}\.){expert}\.", rf"\g<1>{kept.index(expert)}.", out, count=1)
        return TensorPlan(out)
    axis = layout.per_expert_tensors().get(rest)
    return TensorPlan(out) if axis is None else TensorPlan(out, list(kept), axis)


def source_tensors(source_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (sharded or single-file checkpoints)."""
    index = source_dir / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: source_dir / file for name, file in weight_map.items()}
    files = sorted(source_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{source_dir} has no .safetensors files")
    names: dict[str, Path] = {}
    for path in files:
        with safe_open(path, "pt") as f:
            names.update(dict.fromkeys(f.keys(), path))
    return names


class ShardWriter:
    """Collects tensors into shards of at most ``max_bytes`` and writes the transformers index."""

    def __init__(self, out_dir: Path, max_bytes: int = MAX_SHARD_BYTES) -> None:
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        save_file(self.pending, self.out_dir / f".shard-{len(self.shards)}.tmp", metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard, give every shard its final name; return the file names."""
        if self.pending or not self.shards:
            self._flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            (self.out_dir / f".shard-{i}.tmp").rename(self.out_dir / name)
        if n > 1:
            weight_map = {t: name for name, shard in zip(names, self.shards, strict=True) for t in shard}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return names


def _ordered(names: list[str], family: MoEFamily) -> list[tuple[int, list[str]]]:
    """Tensor names grouped by source layer (-1: before the layers), layers in order."""
    groups: dict[int, list[str]] = {}
    for name in sorted(names):
        layer = layer_of(name, family)
        groups.setdefault(-1 if layer is None else layer, []).append(name)
    return sorted(groups.items())


def write_tensors(
    source_dir: Path,
    out_dir: Path,
    decisions: Decisions,
    family: MoEFamily,
    n_layers: int,
    *,
    ctx: RunContext,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    stored: StoredFormat | None = None,
) -> list[str]:
    """Stream every source tensor through :func:`plan_tensor` into shards; return the shard file names.

    ``stored``: the format the source's stored tensors are decoded from (their parts replaced by the decoded
    tensor, kept experts only), a layer at a time."""
    new_index = {old: new for new, old in enumerate(decisions.kept_blocks(n_layers))}
    files = source_tensors(source_dir)
    parts = stored.parts(files) if stored else {}  # decoded name -> stored parts
    stored_names = {part for names in parts.values() for part in names}
    writer = ShardWriter(out_dir, max_shard_bytes)
    with ExitStack() as stack:
        handles = {p: stack.enter_context(safe_open(p, "pt")) for p in set(files.values())}

        def read(name: str) -> torch.Tensor:
            return handles[files[name]].get_tensor(name)

        for layer, names in _ordered([n for n in files if n not in stored_names] + list(parts), family):
            ctx.check_cancelled()
            for name in names:
                plan = plan_tensor(name, decisions, family, new_index)
                if plan is None:
                    continue
                if name in parts:
                    assert stored is not None and plan.axis == 0  # stored parts hold the expert on axis 0
                    writer.add(plan.out_name, read_decoded(stored, read, parts[name], plan.rows))
                    continue
                tensor = read(name)
                if plan.rows is not None:
                    tensor = tensor.index_select(plan.axis, torch.tensor(plan.rows))  # E -> kept along axis
                writer.add(plan.out_name, tensor)
            if layer >= 0:
                ctx.progress("export", layer + 1, n_layers)
    return writer.close()


def trimmed_config_json(source_dir: Path, decisions: Decisions, out_dir: Path) -> dict[str, Any]:
    """config.json of ``source_dir`` trimmed by ``decisions`` (remote code written to ``out_dir`` where needed)."""
    config, _ = source_config(source_dir)
    shape = trimmed_shape(source_dir, decisions)
    return _config_json(source_dir, shape, config.to_dict(), get_adapter(config).layout, out_dir)


def _config_json(source_dir: Path, shape: TrimmedShape, before: dict[str, Any], layout: Any, out_dir: Path) -> dict:
    """The source config.json with only the keys the trimming changed, plus remote-code keys where needed
    (no ``quantization_config`` where the source was read dequantized: ``before`` has none then)."""
    data = json.loads((source_dir / "config.json").read_text())
    if "quantization_config" not in before:
        data.pop("quantization_config", None)
    after = shape.config.to_dict()
    data.update({k: v for k, v in after.items() if before.get(k) != v and k != "transformers_version"})
    if not shape.stock or "auto_map" in data:  # the source's own code, if any, is written anew
        data.update(write_remote_code(out_dir, shape.config, layout))
        data[layout.num_experts_key] = max(
            shape.experts_per_layer.values(), default=getattr(shape.config, layout.num_experts_key)
        )
        data["moecomp_experts_per_layer"] = {str(k): v for k, v in sorted(shape.experts_per_layer.items())}
        data["moecomp_dropped_moe_layers"] = shape.dropped_moe_layers
    return data


def export_trimmed(
    source_dir: Path,
    decisions: Decisions,
    out_dir: Path,
    *,
    manifest: dict[str, Any],
    ctx: RunContext | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write the trimmed checkpoint of ``source_dir`` into ``out_dir`` (created; must be empty) with its manifest."""
    ctx = ctx or RunContext()
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"output folder {out_dir} is not empty")
    config, stored = source_config(source_dir)
    family = get_adapter(config)
    before = config.to_dict()
    shape = trimmed_shape(source_dir, decisions)
    if stored is not None:
        note = stored.note()
        ctx.message("export", note)
        manifest = {**manifest, "notes": [*manifest.get("notes", []), note]}
    write_tensors(
        source_dir, out_dir, decisions, family, config.num_hidden_layers,
        ctx=ctx, max_shard_bytes=max_shard_bytes, stored=stored,
    )  # fmt: skip
    config_data = _config_json(source_dir, shape, before, family.layout, out_dir)
    (out_dir / "config.json").write_text(json.dumps(config_data, indent=2, sort_keys=True) + "\n")
    for name in SIDE_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, out_dir / name)
    output = {
        "loading": "remote_code" if "auto_map" in config_data else "stock",
        "model_type": config_data["model_type"],
        "num_hidden_layers": config_data["num_hidden_layers"],
        "experts_per_layer": {str(k): v for k, v in sorted(shape.experts_per_layer.items())},
        "dropped_moe_layers": shape.dropped_moe_layers,
    }
    write_manifest(out_dir, {**manifest, "output": output})
    return out_dir
