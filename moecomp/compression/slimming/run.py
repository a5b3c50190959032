"""The streamed slimming pass: checkpoint dir (+ trimming decisions not yet applied) -> slimmed checkpoint dir.

    run_streamed(model_dir, stages, calib_ids, out_dir, prior=..., device=..., dtype=..., ctx=...) -> reports

One pass of the layer-streaming engine (:func:`moecomp.compression.engine.calibrate`) with a
:class:`SlimmingObserver`: each decoder layer is read, has ``prior`` applied (kept experts, dropped MoE
sub-layers, dropped blocks), is calibrated and slimmed stage by stage on the device, written to the output
shards, run once more for the next layer and freed. Host memory: two layers' weights, the activations (on the
device when they fit) and one output shard. The embedding, final norm and head are copied from the source.
Then the written checkpoint is read back layer by layer and each layer must answer the probe sequence as the
pass's slimmed layer did (:mod:`.verify`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from moecomp.compression.adapters import get_adapter
from moecomp.compression.context import RunContext
from moecomp.compression.engine import calibrate
from moecomp.compression.export import (
    MAX_SHARD_BYTES,
    ShardWriter,
    layer_of,
    source_config,
    source_tensors,
    trimmed_config_json,
)
from moecomp.compression.lazy_checkpoint import SafetensorsSource
from moecomp.compression.methods.base import SlimmingConfig, StageConfig
from moecomp.compression.methods.registry import slimming_stages
from moecomp.compression.remote_code import write_remote_code
from moecomp.compression.slimming.checkpoint import disk_name, quantization_config
from moecomp.compression.slimming.observer import SlimmingObserver, StageRecord
from moecomp.compression.slimming.verify import verify_streamed
from moecomp.compression.sources import SIDE_FILES
from moecomp.compression.structure import Decisions

DENSE_NOTE = (
    "pruned weights are stored dense (zeros included): unstructured and N:M sparsity save neither disk "
    "nor memory in this checkpoint format"
)


def _copy_outside_layers(model_dir: Path, writer: ShardWriter, family: Any) -> None:
    """Embedding, final norm, lm_head: every tensor outside the decoder layers, as it is."""
    files = source_tensors(model_dir)
    with ExitStack() as stack:
        handles = {p: stack.enter_context(safe_open(p, "pt")) for p in set(files.values())}
        for name, path in sorted(files.items()):
            if layer_of(name, family) is None:
                writer.add(name, handles[path].get_tensor(name))


def _config(
    model_dir: Path, out_dir: Path, prior: Decisions, quant: dict[str, Any] | None, per_expert: bool
) -> dict[str, Any]:
    """config.json of the output; ``per_expert``: routed experts that stock checkpoints of the family hold fused
    were written one linear per expert (quantized), so the checkpoint carries the code that fuses them on load."""
    data = json.loads((model_dir / "config.json").read_text())
    config, stored = source_config(model_dir)
    if stored is not None:  # read dequantized (gpt-oss's mxfp4 experts): not stored so in the output
        del data["quantization_config"]
    if not prior.is_empty():
        data = trimmed_config_json(model_dir, prior, out_dir)
    if per_expert and "auto_map" not in data:
        data.update(write_remote_code(out_dir, config, get_adapter(config).layout))
    if quant is not None:
        data["quantization_config"] = quant
    return data


def _ignored(source: SafetensorsSource, new_index: dict[int, int], prior: Decisions) -> list[str]:
    """The linears llm-compressor lists as not quantized: each layer's router (and shared-expert gate), lm_head."""
    layout = source.family.layout
    names = []
    for old, new in sorted(new_index.items()):
        gates = (layout.router, *(f"{layout.mlp}.{p}" for p in source.family.shared_experts))
        for path in gates:  # a shared path with a weight of its own is a gate; a shared MLP has none
            if old not in prior.dropped_layers and source.has(f"{layout.layers}.{old}.{path}.weight"):
                names.append(disk_name(f"{layout.layers}.{new}.{path}", source.family))
    return [*names, source.family.lm_head]


def run_streamed(
    model_dir: Path,
    stages: Sequence[StageConfig],
    calib_ids: torch.Tensor,
    out_dir: Path,
    *,
    prior: Decisions,
    device: str,
    dtype: torch.dtype,
    save_dtype: torch.dtype,
    ctx: RunContext,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> list[dict[str, Any]]:
    """Slim the checkpoint in ``model_dir`` with ``prior`` applied into ``out_dir``; return per-stage reports."""
    slimming = slimming_stages(stages)
    for stage in slimming:
        stage.check_device(device)  # before any work
    source = SafetensorsSource(model_dir)
    source.family.check_methods(slimming)
    n_layers = source.config.num_hidden_layers
    new_index = {old: new for new, old in enumerate(prior.kept_blocks(n_layers))}
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out_dir, max_shard_bytes)
    _copy_outside_layers(model_dir, writer, source.family)
    observer = SlimmingObserver(list(slimming), writer, new_index, save_dtype, sequences=calib_ids.shape[0])
    for stage in slimming:
        ctx.message(stage.method, f"{stage.method}: {stage.model_dump_json()}")
    name = "+".join(stage.method for stage in slimming)
    calibrate(source, calib_ids, [observer], prior=prior, device=device, dtype=dtype, ctx=ctx, stage=name)
    writer.close()
    quantizer = next((s for s in slimming if s.quantizes), None)
    quant = None
    if quantizer is not None:
        ignored = _ignored(source, new_index, prior)
        quant = quantization_config(quantizer, observer.linears, ignored, quantizer.actorder)
    routed = any(scope == "routed_experts" for _, scope, _ in observer.linears)
    config = _config(model_dir, out_dir, prior, quant, routed and source.family.layout.experts_input_major)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in SIDE_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
    ctx.progress("export", 0, 1)
    check = verify_streamed(out_dir, observer.probes, device=device, dtype=dtype)
    ctx.progress("export", 1, 1)
    check["routers_unchanged"] = observer.routers_unchanged
    return [_report(stage, record, check, calib_ids) for stage, record in zip(slimming, observer.records, strict=True)]


def _report(stage: SlimmingConfig, record: StageRecord, check: dict[str, Any], calib_ids: torch.Tensor) -> dict:
    results: dict[str, Any] = {
        "targets": record.targets,
        "tokens_per_expert": record.tokens_per_expert or None,
        "fallbacks": record.fallbacks,
        "routers_unchanged": check["routers_unchanged"],
        "backend": "moecomp",
    }
    if stage.uses_data:
        results["calibration_tokens"] = int(calib_ids.numel())
        results["calibrate_all_experts"] = bool(getattr(stage, "calibrate_all_experts", False))
    if stage.quantizes:
        results["group_sizes"] = record.group_sizes
    else:
        results |= {
            "requested_sparsity": stage.target_sparsity,  # type: ignore[attr-defined]
            "pattern": stage.pattern,  # type: ignore[attr-defined]
            "realized_sparsity": record.realized_sparsity,
            "mean_realized_sparsity": sum(record.realized_sparsity.values()) / max(len(record.realized_sparsity), 1),
            "storage": DENSE_NOTE,
        }
    if stage.smooths:  # AWQ: how much each kind of smoothing pair cut its consumer's error (best / identity)
        results["preserve_routing"] = stage.preserve_routing  # type: ignore[attr-defined]
        results["error_reduction"] = {k: round(b / max(a, 1e-30), 4) for k, (a, b) in record.smoothing.items()}
    return {
        "method": stage.method,
        "config": stage.model_dump(mode="json"),
        "results": results,
        "seconds": round(record.seconds, 3),
        "checkpoint": check,
    }
