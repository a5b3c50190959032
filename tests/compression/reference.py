"""Slow, direct references for the trimming scores: the whole model loaded normally, plain forward hooks.

Nothing here shares code with the engine or the method modules except the adapters' module paths.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from moecomp.assets import TEXTS
from moecomp.compression.adapters import get_adapter


def shakespeare_ids(model_dir: Path, n: int = 4, seq_len: int = 128) -> torch.Tensor:
    """[n, seq_len] ids: the start of the Shakespeare calibration text, cut into blocks."""
    text = gzip.decompress((TEXTS / "shakespeare.txt.gz").read_bytes()).decode()[: 12 * n * seq_len]
    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"][: n * seq_len]
    assert len(ids) == n * seq_len
    return torch.tensor(ids).view(n, seq_len)


def load_full(model_dir: Path) -> PreTrainedModel:
    attn = get_adapter(AutoConfig.from_pretrained(model_dir)).attn_implementation
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    return model.eval()


def _moe_layers(model: PreTrainedModel) -> dict[int, torch.nn.Module]:
    family = get_adapter(model.config)
    layers = model.get_submodule(family.layout.layers)
    return {i: layer for i, layer in enumerate(layers) if hasattr(layer.get_submodule(family.layout.mlp), "experts")}


def _router_logits(router: torch.nn.Module, args: tuple) -> torch.Tensor:
    """The router's logits [T, E] computed directly from its input: x W^T (+ b), whatever the router returns."""
    x = args[0].reshape(-1, args[0].shape[-1])  # [T, H]
    return F.linear(x.float(), router.weight.float(), getattr(router, "bias", None))


@torch.no_grad()
def router_means(model: PreTrainedModel, ids: torch.Tensor) -> dict[int, list[float]]:
    """Mean over all tokens of softmax (sigmoid for the sigmoid kinds) of the router logits, per layer (current
    numbering); the logits are computed from the router's input and weight, not read from its output."""
    family = get_adapter(model.config)
    logits: dict[int, list[torch.Tensor]] = {}
    handles = [
        layer.get_submodule(family.layout.router).register_forward_hook(
            lambda m, a, out, i=i: logits.setdefault(i, []).append(_router_logits(m, a))
        )
        for i, layer in _moe_layers(model).items()
    ]
    model(ids)
    for h in handles:
        h.remove()
    result = {}
    for i, chunks in logits.items():
        z = torch.cat(chunks).float()
        probs = z.softmax(-1) if family.routing == "softmax" else z.sigmoid()
        result[i] = probs.mean(0).tolist()
    return result


@torch.no_grad()
def layer_similarity(model: PreTrainedModel, ids: torch.Tensor) -> dict[str, dict[int, float]]:
    """Both layer-drop metrics per MoE layer, from hooks on post_attention_layernorm and mlp."""
    layout = get_adapter(model.config).layout
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []

    def on_moe(i: int, out: object) -> None:
        y = out[0] if isinstance(out, tuple) else out  # Llama 4: (hidden [T, H], router logits)
        seen[i]["y"] = y.reshape(seen[i]["x"].shape)

    for i, layer in _moe_layers(model).items():
        handles.append(
            layer.get_submodule(layout.post_attention_norm).register_forward_hook(
                lambda m, a, out, i=i: seen.setdefault(i, {}).update(x=a[0], n=out)
            )
        )
        handles.append(layer.get_submodule(layout.mlp).register_forward_hook(lambda m, a, out, i=i: on_moe(i, out)))
    model(ids)
    for h in handles:
        h.remove()
    residual = {i: F.cosine_similarity(s["x"], s["x"] + s["y"], dim=-1).mean().item() for i, s in seen.items()}
    moe_only = {i: F.cosine_similarity(s["n"], s["y"], dim=-1).mean().item() for i, s in seen.items()}
    return {"residual": residual, "moe_only": moe_only}


@torch.no_grad()
def block_states(model: PreTrainedModel, ids: torch.Tensor) -> list[torch.Tensor]:
    """h_0 .. h_n: block inputs from output_hidden_states, h_n = the last block's output (before the norm:
    output_hidden_states' last entry has the final norm applied)."""
    last: dict[str, torch.Tensor] = {}
    handle = model.model.layers[-1].register_forward_hook(lambda m, a, out: last.update(h=out))
    states = list(model(ids, output_hidden_states=True).hidden_states[:-1])
    handle.remove()
    return states + [last["h"]]


def block_similarity(states: list[torch.Tensor], window: int = 1) -> dict[int, float]:
    """cos(h_i, h_{i+window}) averaged over tokens, per start block i (current numbering)."""
    return {
        i: F.cosine_similarity(states[i], states[i + window], dim=-1).mean().item() for i in range(len(states) - window)
    }


def top(similarity: dict[int, float], n: int) -> list[int]:
    """The n largest (ties: lower index), sorted."""
    return sorted(sorted(similarity, key=lambda i: (-similarity[i], i))[:n])
