"""The seam to llm-compressor: modifiers with MoE fixes, a progress/token-count monitor, and oneshot.

Fixes made here, each at one place:

- Experts that no calibration token reached have an all-zero Hessian (GPTQ, SparseGPT) or all-zero
  input norms (Wanda). llm-compressor would zero such an expert's weights (GPTQ marks every column
  "dead") or prune an arbitrary half. The ``Routed*`` modifiers replace the missing statistics by the
  identity, which turns GPTQ into round-to-nearest and SparseGPT/Wanda into magnitude pruning for that
  expert, and record the module as a fallback.
- AWQ pins its cached activations in host memory unconditionally, which fails without an accelerator
  (``RuntimeError: ... pin_memory``). :func:`cpu_safe_pinning` makes ``IntermediatesCache.pin_memory``
  a no-op while no CUDA device exists; pinning only speeds host->device copies, so nothing else changes.
- transformers reloads a checkpoint through its family's conversion mapping (e.g. Mixtral's
  ``block_sparse_moe.experts.N.w1`` -> fused ``mlp.experts.gate_up_proj``). Per-expert linears saved
  under their in-memory names (``gate_proj``) are silently not matched and the experts come back
  random; :func:`save_conversions` renames them to the names the family's checkpoints use on disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from compressed_tensors.utils import patch_attr
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.modifier import Modifier
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier
from llmcompressor.pipelines.cache import IntermediatesCache
from pydantic import PrivateAttr
from torch import nn
from transformers import PreTrainedModel
from transformers.core_model_loading import WeightRenaming, WeightTransform

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.context import RunContext
from moecomp.compression.structure import decoder_layers


def _identity_hessian(hessian: torch.Tensor) -> torch.Tensor:
    return torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)


class RoutedGPTQModifier(GPTQModifier):
    """GPTQ whose modules without any calibration token fall back to round-to-nearest (H = I)."""

    _fallbacks: list[str] = PrivateAttr(default_factory=list)

    def compress_module_list(self, module_list: list[nn.Module]) -> None:
        for module in module_list:
            if not torch.any(self._hessians[module]):
                self._hessians[module] = _identity_hessian(self._hessians[module])
                self._num_samples[module] = torch.ones_like(self._num_samples[module])
                self._fallbacks.append(self._module_names[module])
        super().compress_module_list(module_list)


class RoutedSparseGPTModifier(SparseGPTModifier):
    """SparseGPT whose modules without any calibration token fall back to magnitude pruning (H = I)."""

    _fallbacks: list[str] = PrivateAttr(default_factory=list)

    def compress_modules(self) -> None:
        for module in list(self._num_samples):
            if not torch.any(self._hessians[module]):
                self._hessians[module] = _identity_hessian(self._hessians[module])
                self._num_samples[module] = max(1, self._num_samples[module])
                self._fallbacks.append(self._module_names[module])
        super().compress_modules()


class RoutedWandaModifier(WandaPruningModifier):
    """Wanda whose modules without any calibration token fall back to magnitude pruning (||X_j|| = 1)."""

    _fallbacks: list[str] = PrivateAttr(default_factory=list)

    def compress_modules(self) -> None:
        for module in list(self._num_samples):
            if not torch.any(self._row_scalars[module]):
                self._row_scalars[module] = torch.ones_like(self._row_scalars[module])
                self._fallbacks.append(self._module_names[module])
        super().compress_modules()


def fallbacks(modifiers: list[Modifier]) -> list[str]:
    """Module names that fell back to the data-free variant, over all modifiers of a stage."""
    return sorted(name for m in modifiers for name in getattr(m, "_fallbacks", []))


class SlimmingMonitor(Modifier):
    """Counts the tokens routed to each expert and reports progress after each decoder layer.

    Its hooks are llm-compressor hooks, so they fire in the calibration pass of each layer and not in
    the propagation pass (which would count every token twice).
    """

    stage: str
    _ctx: RunContext = PrivateAttr(default_factory=RunContext)
    _routers: dict[int, nn.Module] = PrivateAttr(default_factory=dict)
    _layer_of: dict[int, int] = PrivateAttr(default_factory=dict)  # id(module) -> decoder layer
    _counts: dict[int, torch.Tensor] = PrivateAttr(default_factory=dict)
    _num_layers: int = PrivateAttr(default=0)

    def attach(self, model: nn.Module, family: MoEFamily, routers: dict[int, str], ctx: RunContext) -> None:
        self._ctx = ctx
        self._routers = {layer: model.get_submodule(name) for layer, name in routers.items()}
        layers = decoder_layers(model, family.layout)
        self._num_layers = len(layers)
        self._layer_of = {id(sub): index for index, layer in enumerate(layers) for sub in layer.modules()}

    def on_initialize(self, state: Any, **kwargs: Any) -> bool:
        return True

    def on_calibration_start(self, state: Any, event: Any, **kwargs: Any) -> None:
        for layer, router in self._routers.items():
            self.register_hook(router, self._counter(layer), "forward")

    def _counter(self, layer: int):
        def hook(module: Any, args: Any, output: Any) -> None:  # a family's router (its own attributes)
            indices = _topk_indices(output)
            if indices is None:
                return
            experts = module.weight.shape[0]
            counts = torch.bincount(indices.reshape(-1).cpu(), minlength=experts)
            self._counts[layer] = self._counts.get(layer, torch.zeros(experts, dtype=torch.long)) + counts

        return hook

    def on_sequential_epoch_end(self, state: Any, event: Any, modules: list[nn.Module], **kwargs: Any) -> None:
        done = {self._layer_of[id(m)] for m in modules if id(m) in self._layer_of}
        if done:
            self._ctx.progress(self.stage, max(done) + 1, self._num_layers)
        self._ctx.check_cancelled()

    def on_calibration_end(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.remove_hooks()

    def on_finalize(self, state: Any, **kwargs: Any) -> bool:
        self.remove_hooks()
        return True

    def tokens_per_expert(self) -> dict[int, list[int]]:
        return {layer: counts.tolist() for layer, counts in sorted(self._counts.items())}


def _topk_indices(output: Any) -> torch.Tensor | None:
    # Routers return (logits, top-k weights, top-k indices): the integer tensor is the selection.
    items = output if isinstance(output, tuple) else (output,)
    for item in reversed(items):
        if isinstance(item, torch.Tensor) and not item.is_floating_point():
            return item
    return None


@contextlib.contextmanager
def cpu_safe_pinning() -> Iterator[None]:
    """Make AWQ's host-memory pinning a no-op where there is no CUDA device to copy to."""
    if torch.cuda.is_available():
        yield
        return

    def no_pin(self: IntermediatesCache, batch_index: int, input_names: list[str] | None = None) -> None:
        return None

    with patch_attr(IntermediatesCache, "pin_memory", no_pin):
        yield


def save_conversions(family: MoEFamily) -> list[WeightTransform]:
    """Load-direction renamings (disk -> module) whose inverse transformers applies when saving."""
    disk = family.disk
    experts = family.layout.experts.rpartition(".")[2]
    renames: list[WeightTransform] = [WeightRenaming(src, dst) for src, dst in disk.renames]
    for on_disk, in_memory in ((disk.gate, "gate_proj"), (disk.up, "up_proj"), (disk.down, "down_proj")):
        if on_disk != in_memory:
            renames.append(WeightRenaming(rf"\.{experts}\.(\d+)\.{on_disk}\.", rf".{experts}.\1.{in_memory}."))
    return renames


def run_oneshot(
    model: PreTrainedModel,
    tokenizer: Any,
    modifiers: list[Modifier],
    calib_ids: torch.Tensor | None,
    *,
    calibrate_all_experts: bool,
) -> None:
    """Apply ``modifiers`` in one llm-compressor pass: layer by layer over ``calib_ids`` [N, L], or
    data-free when ``calib_ids`` is None."""
    from datasets import Dataset
    from llmcompressor import oneshot

    kwargs: dict[str, Any] = {"pipeline": "datafree"}
    if calib_ids is not None:
        rows = calib_ids.tolist()
        dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
        kwargs = {
            "pipeline": "sequential",
            "dataset": dataset,
            "num_calibration_samples": len(rows),
            "max_seq_length": calib_ids.shape[1],
            "shuffle_calibration_samples": False,
            "moe_calibrate_all_experts": calibrate_all_experts,
        }
    # A checkpoint trimmed by moecomp carries its own modeling code (loaded only for our exports): llm-compressor
    # reads its config from disk again and must be allowed to.
    kwargs["trust_remote_code_model"] = getattr(model.config, "auto_map", None) is not None
    with cpu_safe_pinning():
        oneshot(model=model, processor=tokenizer, recipe=modifiers, **kwargs)
