"""The slimming pass: checkpoint dir -> pruned and/or quantized checkpoint dir.

    run_slimming(model_dir, stages, calib_ids, out_dir, device=..., ctx=...) -> [per-stage report]

The model is loaded whole into host memory (see :func:`compute_dtype`), its fused experts are split into one
``nn.Linear`` per projection and expert (llm-compressor's ``linearize_moe``), and each stage runs
layer by layer (llm-compressor's sequential pipeline: one decoder layer at a time on the accelerator
when there is one). Stage order: any number of pruning stages, then at most one quantization stage.

The checkpoint is written with stock names that plain transformers (+ compressed-tensors for the
quantized case) loads: packed low-bit weights in compressed-tensors' ``pack-quantized`` format, or
dense weights after pruning (zeros stored as zeros: pruning saves no disk or memory in this format).
Every export is reloaded and its logits compared with the in-memory model before it is reported.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.offload import remove_dispatch
from llmcompressor.modeling.moe.conversion_mappings import set_save_conversion_mapping
from llmcompressor.modeling.moe.linearize import linearize_moe
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from moecomp.compression.adapters import MoEFamily, get_adapter
from moecomp.compression.context import RunContext
from moecomp.compression.dtypes import parse_dtype
from moecomp.compression.lazy_checkpoint import read_config
from moecomp.compression.manifest import MANIFEST_NAME
from moecomp.compression.methods.base import SlimmingConfig, StageConfig
from moecomp.compression.methods.pruning import (
    MagnitudeConfig,
    PruningStage,
    magnitude_mask,
    realized_sparsity,
)
from moecomp.compression.methods.quantization import QuantizationStage, group_sizes_used
from moecomp.compression.methods.registry import slimming_stages
from moecomp.compression.slimming.llmcompressor_modifiers import split_patterns
from moecomp.compression.slimming.llmcompressor_seam import SlimmingMonitor, fallbacks, run_oneshot, save_conversions
from moecomp.compression.slimming.reload_check import checkpoint_bytes, router_state, verify_reload
from moecomp.compression.slimming.targets import Target, find_targets, linear, router_names

DENSE_NOTE = (
    "pruned weights are stored dense (zeros included): unstructured and N:M sparsity save neither disk "
    "nor memory in this checkpoint format"
)


def validate_stages(stages: list[StageConfig], device: str) -> list[SlimmingConfig]:
    """Pruning stages first, then at most one quantization stage; FP8 only on FP8 hardware. Returns them."""
    slimming = slimming_stages(stages)
    quant = [i for i, stage in enumerate(slimming) if stage.quantizes]
    if len(quant) > 1 or (quant and quant[0] != len(stages) - 1):
        raise ValueError("at most one quantization stage, and it must be the last slimming stage")
    for stage in slimming:
        stage.check_device(device)
    return slimming


def compute_dtype(dtype: str, device: str) -> Any:
    """The dtype the pass computes in: as asked, else the checkpoint's on an accelerator and float32 on
    CPU (CPU kernels for bf16 matmuls and ``index_add_`` are 10-30x slower than for float32)."""
    if dtype != "auto":
        return parse_dtype(dtype)
    return "auto" if device.startswith("cuda") else torch.float32


def load_linearized(model_dir: Path, dtype: Any = "auto") -> tuple[PreTrainedModel, MoEFamily, Any]:
    """The whole model on the host with one ``nn.Linear`` per expert projection, its family, its tokenizer.

    A checkpoint trimmed by moecomp into a shape its config cannot express (a manifest beside it) loads with
    the modeling code moecomp bundled in it; no other checkpoint's code is run.
    """
    family = get_adapter(read_config(model_dir))
    own = (Path(model_dir) / MANIFEST_NAME).is_file()
    torch_dtype: Any = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=own)
    model.eval()
    linearize_moe(model)
    return model, family, AutoTokenizer.from_pretrained(model_dir, trust_remote_code=own)


def _scope_counts(targets: list[Target]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for target in targets:
        counts[target.scope] = counts.get(target.scope, 0) + 1
    return counts


@torch.no_grad()
def apply_magnitude(
    model: nn.Module, config: MagnitudeConfig, targets: list[Target], *, device: str, ctx: RunContext
) -> None:
    """Zero the lowest-|W| weights of every target, layer by layer (no data)."""
    n, m = config.n_m
    layers = sorted({t.layer for t in targets})
    for step, layer in enumerate(layers, start=1):
        for target in (t for t in targets if t.layer == layer):
            weight = linear(model, target.name).weight
            mask = magnitude_mask(weight.to(device), config.target_sparsity, n, m).to(weight.device)
            weight.masked_fill_(mask, 0)
        ctx.progress(config.method, step, len(layers))
        ctx.check_cancelled()


def _run_stage(
    model: PreTrainedModel,
    family: MoEFamily,
    tokenizer: Any,
    config: SlimmingConfig,
    calib_ids: torch.Tensor,
    *,
    device: str,
    ctx: RunContext,
) -> dict[str, Any]:
    method = config.method
    targets = find_targets(model, family, config.scope)
    if not targets:
        raise ValueError(f"{method}: no linear layer matches scope {config.scope}")
    results: dict[str, Any] = {"targets": _scope_counts(targets), "tokens_per_expert": None, "fallbacks": []}
    if isinstance(config, MagnitudeConfig):
        apply_magnitude(model, config, targets, device=device, ctx=ctx)
        return results
    modifiers = config.llmcompressor_modifiers(model, family, targets)
    uses_data = config.uses_data
    monitor = SlimmingMonitor(stage=method)
    monitor.attach(model, family, router_names(model, family), ctx)
    all_experts = bool(getattr(config, "calibrate_all_experts", False))
    run_oneshot(
        model, tokenizer, [*modifiers, monitor], calib_ids if uses_data else None, calibrate_all_experts=all_experts
    )
    if not uses_data:
        ctx.progress(method, 1, 1)  # data-free: one step, no layer-by-layer pass
    if uses_data:
        results["tokens_per_expert"] = monitor.tokens_per_expert()
        results["calibration_tokens"] = int(calib_ids.numel())
        results["calibrate_all_experts"] = all_experts
    results["fallbacks"] = fallbacks(modifiers)
    if results["fallbacks"]:
        kind = "round-to-nearest" if config.quantizes else "magnitude pruning"
        ctx.message(method, f"{len(results['fallbacks'])} linears saw no calibration token: {kind} used", "warning")
    if isinstance(config, QuantizationStage):
        results["group_sizes"] = group_sizes_used(config, *split_patterns(targets))
    return results


def _pruning_report(model: nn.Module, config: PruningStage, family: MoEFamily) -> dict[str, Any]:
    targets = find_targets(model, family, config.scope)
    per_module = {t.name: realized_sparsity(linear(model, t.name).weight) for t in targets}
    return {
        "requested_sparsity": config.target_sparsity,
        "pattern": config.pattern,
        "realized_sparsity": per_module,
        "mean_realized_sparsity": sum(per_module.values()) / len(per_module),
        "storage": DENSE_NOTE,
    }


def _save(model: PreTrainedModel, family: MoEFamily, tokenizer: Any, out_dir: Path, quantized: bool) -> None:
    set_save_conversion_mapping(model, save_conversions(family))
    out_dir.mkdir(parents=True, exist_ok=True)
    if quantized:
        model.save_pretrained(str(out_dir), save_compressed=True)  # llm-compressor's wrapper: pack-quantized
        _routed_experts_scheme_first(out_dir / "config.json", family)
    else:
        PreTrainedModel.save_pretrained(model, str(out_dir))  # plain transformers: dense safetensors
    tokenizer.save_pretrained(str(out_dir))


def _routed_experts_scheme_first(config_path: Path, family: MoEFamily) -> None:
    """Put the routed experts' scheme first among the saved quantization schemes.

    transformers dequantizes fused experts at load with the first scheme whose regexes mention "experts",
    and compressed-tensors saves the schemes in the order modules first use them: attention and shared
    experts come before the routed experts in a decoder layer, so DeepSeek's ``shared_experts`` scheme
    (another group size) would be applied to the routed experts.
    """
    config = json.loads(config_path.read_text())
    groups = config["quantization_config"]["config_groups"].values()
    routed = re.escape(family.layout.experts) + r"\.\d+\."  # as it appears inside the targets' regexes
    ordered = sorted(groups, key=lambda group: not any(routed in target for target in group["targets"]))
    config["quantization_config"]["config_groups"] = {f"group_{i}": group for i, group in enumerate(ordered)}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def slim_model(
    model: PreTrainedModel,
    family: MoEFamily,
    tokenizer: Any,
    stages: list[StageConfig],
    calib_ids: torch.Tensor,
    *,
    device: str,
    ctx: RunContext,
) -> list[dict[str, Any]]:
    """Apply the slimming stages to a linearized in-memory model (see :func:`load_linearized`)."""
    routers = router_state(model, family)
    reports: list[dict[str, Any]] = []
    for config in validate_stages(stages, device):
        method = config.method
        ctx.message(method, f"{method}: {config.model_dump_json()}")
        start = time.perf_counter()
        results = _run_stage(model, family, tokenizer, config, calib_ids, device=device, ctx=ctx)
        if isinstance(config, PruningStage):
            results.update(_pruning_report(model, config, family))
        results["routers_unchanged"] = router_state(model, family) == routers
        seconds = round(time.perf_counter() - start, 3)
        reports.append({"method": method, "config": config.model_dump(mode="json"), "results": results})
        reports[-1]["seconds"] = seconds
        ctx.metrics(method, {"seconds": seconds, "routers_unchanged": results["routers_unchanged"]})
    return reports


def export_slimmed(
    model: PreTrainedModel,
    family: MoEFamily,
    tokenizer: Any,
    out_dir: Path,
    *,
    source_dir: Path,
    quantized: bool,
    check_ids: torch.Tensor,
) -> dict[str, Any]:
    """Write the checkpoint, reload it with plain transformers, compare logits, measure bytes on disk."""
    _save(model, family, tokenizer, out_dir, quantized)
    check = verify_reload(out_dir, model, family, check_ids)
    check.update(checkpoint_bytes(out_dir, source_dir))
    if not quantized:
        check["storage"] = DENSE_NOTE
    return check


def run_slimming(
    model_dir: Path,
    stages: list[StageConfig],
    calib_ids: torch.Tensor,
    out_dir: Path,
    *,
    device: str,
    ctx: RunContext,
    dtype: str = "auto",
) -> list[dict[str, Any]]:
    """Prune and/or quantize the experts of the checkpoint in ``model_dir``; write the result to ``out_dir``.

    Returns, per stage: ``method``, ``config`` (settings), ``results`` (targets per scope, tokens routed
    to each expert per layer during calibration, modules that fell back to the data-free variant,
    group sizes / realized sparsity per module, ``routers_unchanged``), ``seconds``, and ``checkpoint``
    (bytes on disk vs the source, reload check) which is the same for every stage of the pass.
    """
    slimming = validate_stages(stages, device)
    source_dtype = read_config(Path(model_dir)).dtype or torch.float32
    model, family, tokenizer = load_linearized(Path(model_dir), compute_dtype(dtype, device))
    reports = slim_model(model, family, tokenizer, stages, calib_ids, device=device, ctx=ctx)
    if model.dtype != source_dtype and dtype == "auto":
        # The checkpoint keeps the source's dtype whatever the pass computed in; llm-compressor's
        # offloading keeps its own copies of the weights, so it is removed before the cast.
        remove_dispatch(model).to(source_dtype)
    quantized = any(stage.quantizes for stage in slimming)
    ctx.progress("export", 0, 1)
    check = export_slimmed(
        model, family, tokenizer, Path(out_dir), source_dir=Path(model_dir), quantized=quantized, check_ids=calib_ids
    )
    ctx.progress("export", 1, 1)
    for report in reports:
        report["checkpoint"] = check
    return reports
