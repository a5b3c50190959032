"""Checks on a slimmed model: routers untouched, the export reloads module by module to the same outputs,
bytes on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.utils import get_execution_device
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.slimming.targets import router_names
from moecomp.compression.structure import decoder_layers

# A reloaded export is refused when any module of it, given the same input as the in-memory module of the same
# name, answers more than MODULE_TOLERANCE apart (mean |difference| / mean |output|). Module by module the two
# hold the same weights in the same dtype, so they agree to the last bits (measured: 0 for linears and norms,
# 1e-5 for fused vs per-expert experts in bf16); experts reloaded at random are O(1) apart. Whole-model
# logits are reported but not gated: in bf16 the fused expert kernel sums the top-k outputs in another
# order than per-expert linears do, and over many layers of a model with random weights (near-flat
# logits) that alone moved 12% of the argmaxes on an H200 (Mixtral-8x7B shape, 4 layers).
MODULE_TOLERANCE = 1e-3
PROBE_TOKENS = 64


class ExportMismatch(RuntimeError):
    """The checkpoint written to disk does not reproduce the in-memory model."""


def router_state(model: nn.Module, family: MoEFamily) -> dict[str, str]:
    """sha256 of every router's (and shared-expert gate's) tensors: equal dicts mean bit-identical routers."""
    names = list(router_names(model, family).values())
    layers = decoder_layers(model, family.layout)
    for index in router_names(model, family):
        mlp = layers[index].get_submodule(family.layout.mlp)
        for path in family.shared_experts:
            module = mlp.get_submodule(path)
            if not list(module.children()):
                names.append(f"{family.layout.layers}.{index}.{family.layout.mlp}.{path}")
    tensors = {f"{name}.{k}": v for name in names for k, v in model.get_submodule(name).state_dict().items()}
    state = model.state_dict()
    for index in router_names(model, family):  # other per-expert routing tensors (MiniMax-M2's correction bias)
        prefix = f"{family.layout.layers}.{index}."
        tensors |= {prefix + p: state[prefix + p] for p, _ in family.layout.expert_indexed if prefix + p in state}
    digests: dict[str, str] = {}
    for key, tensor in tensors.items():
        raw = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        digests[key] = hashlib.sha256(raw).hexdigest()
    return digests


@torch.no_grad()
def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    device = get_execution_device(model)
    return model(ids.to(device)).logits.float().cpu()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """mean |got - expected| / mean |expected|."""
    return float((got - expected).abs().mean() / expected.abs().mean().clamp_min(1e-12))


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _probe_inputs(module: Any, name: str, family: MoEFamily, config: Any) -> tuple:
    """Inputs for one module of the reloaded model: token ids, hidden states, or hidden states routed to
    every expert of a fused experts module in turn (top-1, weight 1)."""
    generator = torch.Generator().manual_seed(0)
    if isinstance(module, nn.Embedding):
        return (torch.randint(0, module.num_embeddings, (1, PROBE_TOKENS), generator=generator),)
    if name.endswith(family.layout.experts):
        experts = family.num_experts(config)
        hidden = torch.randn(PROBE_TOKENS * experts, config.hidden_size, generator=generator)
        index = torch.arange(experts).repeat_interleave(PROBE_TOKENS)[:, None]
        return hidden, index, torch.ones(len(index), 1)
    width = getattr(module, "in_features", None) or module.weight.shape[-1]
    return (torch.randn(PROBE_TOKENS, width, generator=generator),)


@torch.no_grad()
def _module_error(expected_module: nn.Module, got_module: nn.Module, inputs: tuple, dtype: torch.dtype) -> float:
    def run(module: nn.Module) -> torch.Tensor:
        device = get_execution_device(module)
        args = [t.to(device, dtype if t.is_floating_point() else t.dtype) for t in inputs]
        return _first_tensor(module(*args)).float().cpu()

    expected, got = run(expected_module), run(got_module)
    return relative_error(got, expected)


def module_errors(model: PreTrainedModel, reloaded: nn.Module, family: MoEFamily) -> dict[str, float]:
    """Relative output error of every module of ``reloaded`` that holds weights of its own (fused experts
    as one module) against the module of the same name in ``model``."""
    errors: dict[str, float] = {}
    for name, module in reloaded.named_modules():
        if list(module.parameters(recurse=False)):
            inputs = _probe_inputs(module, name, family, reloaded.config)
            errors[name] = _module_error(model.get_submodule(name), module, inputs, model.dtype)
    return errors


@torch.no_grad()
def verify_reload(
    out_dir: Path, model: PreTrainedModel, family: MoEFamily, calib_ids: torch.Tensor, rows: int = 2, tokens: int = 128
) -> dict:
    """Reload ``out_dir`` with plain transformers; every module must answer as the in-memory one does."""
    device = get_execution_device(model)
    own_code = getattr(model.config, "auto_map", None) is not None  # moecomp's bundled code, copied by the save
    reloaded = AutoModelForCausalLM.from_pretrained(
        out_dir, dtype=model.dtype, device_map=str(device), trust_remote_code=own_code
    )
    ids = calib_ids[:rows, :tokens]
    # Whole-model forwards first: compressed-tensors decompresses packed weights in a hook on the first one.
    expected, got = _logits(model, ids), _logits(reloaded, ids)
    errors = module_errors(model, reloaded, family)
    del reloaded
    worst = max(errors, key=errors.__getitem__)
    if errors[worst] > MODULE_TOLERANCE:
        bad = sum(e > MODULE_TOLERANCE for e in errors.values())
        raise ExportMismatch(
            f"the checkpoint in {out_dir} does not reproduce the in-memory model: {bad} of {len(errors)} modules "
            f"answer differently, worst {worst} (relative error {errors[worst]:.3g} > {MODULE_TOLERANCE}): "
            "weights were not matched on load"
        )
    return {
        "reload_modules_checked": len(errors),
        "reload_worst_module": worst,
        "reload_worst_module_error": errors[worst],
        "reload_relative_error": relative_error(got, expected),
        "reload_top1_agreement": float((got.argmax(-1) == expected.argmax(-1)).float().mean()),
    }


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def checkpoint_bytes(out_dir: Path, source_dir: Path) -> dict[str, Any]:
    """Bytes of the exported weights and of the source's, and how much smaller the export is."""
    written, source = _weights_bytes(out_dir), _weights_bytes(source_dir)
    return {
        "bytes_on_disk": sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
        "weights_bytes": written,
        "source_weights_bytes": source,
        "weights_ratio": round(written / source, 4) if source else None,
    }
