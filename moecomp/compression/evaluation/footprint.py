"""Size of a checkpoint: bytes on disk, parameters in total and per token, FLOPs per token.

active = total - sum over MoE blocks of routed_params * (1 - top_k / n_experts)
  (a token runs top_k of the n routed experts; shared experts, attention, norms and the LM head always run)
flops_per_token(C) = 2 * (active - embedding) + 4 * n_attention_layers * C * n_heads * head_dim
  2 FLOPs per multiply-add of every weight a token touches (the embedding is a lookup, not a matmul),
  plus the attention scores q.k and the weighted sum of v over a context of C earlier tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from moecomp.compression.evaluation.packed import WEIGHTS_PER_ELEMENT

# compressed-tensors keeps a quantized linear as packed int32 words plus scales: count the weight it
# stands for (weight_shape), not the storage tensors.
_QUANT_STORAGE = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")


def param_count(module: nn.Module) -> int:
    """Logical parameters of ``module``: a packed quantized weight counts as the dense weight it encodes, whether
    compressed-tensors holds it (parameters beside ``weight_shape``) or moecomp's packed runtime (buffers)."""
    total, seen = 0, set()
    for sub in module.modules():
        shape = getattr(sub, "weight_shape", None)
        if shape is not None and hasattr(sub, "weight_packed"):
            total += int(torch.tensor(shape.tolist()).prod())
        else:
            total += sum(b.numel() * WEIGHTS_PER_ELEMENT.get(n, 0) for n, b in sub.named_buffers(recurse=False))
        for name, p in sub.named_parameters(recurse=False):
            if name not in _QUANT_STORAGE and id(p) not in seen:  # tied embeddings count once
                seen.add(id(p))
                total += p.numel()
    return total


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _routed(block: nn.Module) -> tuple[int, int, int] | None:
    """(routed params, n experts, top_k) of an MoE block with ``experts`` and a router ``gate``; else None."""
    experts, gate = getattr(block, "experts", None), getattr(block, "gate", None)
    top_k = getattr(gate, "top_k", None) or getattr(block, "top_k", None)
    if experts is None or top_k is None:
        return None
    params = param_count(experts)
    if not params:
        return None
    n_experts = getattr(gate, "num_experts", None) or next(iter([*experts.parameters(), *experts.buffers()])).shape[0]
    return params, int(n_experts), int(top_k)


def active_params(model: nn.Module) -> int:
    """Parameters one token runs through (see module docstring)."""
    total = param_count(model)
    idle = 0.0
    for module in model.modules():
        routed = _routed(module)
        if routed is not None:
            params, n_experts, top_k = routed
            idle += params * (1 - min(top_k, n_experts) / n_experts)
    return int(total - idle)


def attention_layers(model: nn.Module) -> int:
    return sum(1 for name, _ in model.named_modules() if name.endswith("self_attn"))


def footprint(model: PreTrainedModel, path: Path, context: int) -> dict[str, Any]:
    """Disk bytes, parameters and FLOPs per token at a context of ``context`` tokens."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    embedding = cast(torch.Tensor, model.get_input_embeddings().weight)
    output = model.get_output_embeddings()
    # With tied embeddings the one matrix is also the LM head, which is a matmul: keep it.
    lookup = 0 if output is not None and output.weight is embedding else embedding.numel()
    active = active_params(model)
    attn = 4 * attention_layers(model) * context * heads * head_dim
    return {
        "disk_bytes": disk_bytes(path),
        "params_total": param_count(model),
        "params_active": active,
        "flops_per_token": 2 * (active - lookup) + attn,
        "flops_context": context,
    }
