"""The model skeleton and the inputs of its decoder layers, built the way the model's own forward does.

The skeleton lives on the ``meta`` device; only the embedding and the rotary embedding are made real.
The model's forward is then run with every decoder layer replaced by a catcher that records the
arguments the model passes to it (position embeddings, the causal mask of that layer's attention
type, position ids) and stops the forward. So masks and rotary embeddings are exactly the model's.

Memory (bytes) of a calibration pass, N sequences of L tokens, hidden H, activation dtype of b bytes:
  one decoder layer's weights (on the device; the next one is prefetched into pinned host memory)
  +  2 * N * L * H * b (layer inputs and outputs)
  +  micro-batch working set (the layer's forward on m sequences, about m * L * (H + k * 2I) * b for
     top-k experts of width I, plus attention)  +  per-stage extras (consecutive block drop keeps
     ``drop`` more N * L * H copies on the host).
The two activation buffers stay on the device when they fit in its free memory with room for the rest,
otherwise on the host (pinned when CUDA is used), streamed to the device one micro-batch at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.lazy_checkpoint import WeightSource, assign_tensors, state_names
from moecomp.compression.structure import Decisions, decoder_layers, drop_moe_sublayer, slice_experts


class _Stop(Exception):
    """Raised by the last catcher: the rest of the forward is not needed."""


class _Catcher(nn.Module):
    def __init__(self, index: int, store: dict[int, Any], stop_at: int) -> None:
        super().__init__()
        self.index, self.store, self.stop_at = index, store, stop_at

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            raise TypeError("decoder layers are expected to receive keyword arguments only")
        self.store[self.index] = (hidden_states, kwargs)
        if self.index == self.stop_at:
            raise _Stop()
        return hidden_states


def build_skeleton(source: WeightSource, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The model on ``meta`` with a real embedding and rotary embedding on ``device``."""
    config: PretrainedConfig = source.config
    config._attn_implementation = source.family.attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    family = source.family
    _apply_checkpoint_structure(model, family, getattr(source, "structure", None))
    embed = model.get_submodule(family.embed_tokens)
    assign_tensors(embed, source.module_tensors(family.embed_tokens + ".", state_names(embed), None, device, dtype))
    rotary = model.get_submodule(family.rotary_emb)
    _set(model, family.rotary_emb, type(rotary)(config=config).to(device))  # inv_freq is not in checkpoints
    return model


def _apply_checkpoint_structure(model: nn.Module, family: MoEFamily, structure: Decisions | None) -> None:
    """Shape the skeleton like a checkpoint that is itself trimmed (the config alone cannot say it).

    Only the modules change, never the config: the config keeps describing the checkpoint's own numbering.
    """
    if structure is None:
        return
    layers = decoder_layers(model, family.layout)
    for idx, kept in structure.kept_experts.items():
        slice_experts(layers[idx], kept, family.layout)
    for idx in structure.dropped_layers:
        drop_moe_sublayer(layers[idx], family.layout)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent), name, module)


@torch.no_grad()
def capture(model: nn.Module, family: MoEFamily, ids: torch.Tensor, stop_at: int) -> dict[int, Any]:
    """Run the model's forward on ``ids``; return {layer: (hidden input, kwargs)} for layers 0..stop_at."""
    layers = decoder_layers(model, family.layout)
    originals = list(layers)
    store: dict[int, Any] = {}
    try:
        for i in range(len(layers)):
            layers[i] = _Catcher(i, store, stop_at)
        model.get_submodule(family.base_model)(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    return store


def layer_kwargs(model: nn.Module, family: MoEFamily, seq_len: int, device: torch.device) -> list[dict[str, Any]]:
    """The keyword arguments of every decoder layer for one sequence of ``seq_len`` tokens.

    Calibration sequences are full packed blocks (no padding), so the arguments do not depend on the
    tokens and broadcast over any micro-batch size.
    """
    n = len(decoder_layers(model, family.layout))
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    store = capture(model, family, ids, stop_at=n - 1)
    return [store[i][1] for i in range(n)]


@dataclass(frozen=True)
class Plan:
    """Where activations live and how the batch is cut."""

    activations_on_device: bool
    micro_batch: int
    activation_bytes: int  # one [N, L, H] buffer
    layer_bytes: int  # the largest decoder layer's weights

    def describe(self, n: int, seq_len: int) -> str:
        where = "device" if self.activations_on_device else "host (pinned)"
        gib = 2**30
        return (
            f"calibration: {n} x {seq_len} tokens, micro-batch {self.micro_batch} sequences; "
            f"activations 2 x {self.activation_bytes / gib:.2f} GiB on the {where}; "
            f"one layer's weights {self.layer_bytes / gib:.2f} GiB"
        )


class HostMemoryError(MemoryError):
    """A pass that would need more host memory than the machine has available, refused before it starts."""


def available_host_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_host_memory(plan: Plan, device: torch.device, extra_bytes: int, available: int | None = None) -> None:
    """Refuse a pass whose host memory, counted low (activations held on the host, two layers' weights and
    ``extra_bytes`` of the observers), exceeds what is available: better now than killed hours in."""
    available = available_host_bytes() if available is None else available
    on_host = device.type != "cuda" or not plan.activations_on_device
    activations = 2 * plan.activation_bytes if on_host else 0
    needed = activations + 2 * plan.layer_bytes + extra_bytes
    if available is not None and needed > available:
        gib = 2**30
        raise HostMemoryError(
            f"this pass needs at least {needed / gib:.1f} GiB of host memory (activations {activations / gib:.1f}, "
            f"two layers' weights {2 * plan.layer_bytes / gib:.1f}, the stages' own buffers {extra_bytes / gib:.1f}: "
            "consecutive block_drop's 'drop' copies of the hidden states, slimming's output shard) and "
            f"{available / gib:.1f} GiB are "
            "available; lower calibration samples x seq_len or block_drop's drop"
        )


def layer_nbytes(layer: nn.Module, dtype: torch.dtype) -> int:
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(t.numel() * size for t in layer.state_dict(keep_vars=True).values())


def working_set(config: PretrainedConfig, family: MoEFamily, tokens: int, dtype: torch.dtype) -> int:
    """Rough peak bytes of one micro-batch's forward: the experts' [tokens*k, 2I] projections (and
    their masked copy and activation), plus about a dozen fp32 [tokens, H] temporaries (norms, hooks)."""
    size = torch.tensor([], dtype=dtype).element_size()
    width = getattr(config, "moe_intermediate_size", None) or config.intermediate_size
    moe = tokens * family.top_k(config) * 2 * width * size * 5 // 2
    return moe + 12 * tokens * config.hidden_size * 4


def micro_batch_size(n: int, seq_len: int, tokens_per_micro_batch: int = 8192) -> int:
    """Sequences per micro-batch: about ``tokens_per_micro_batch`` tokens, at least one sequence."""
    return max(1, min(n, tokens_per_micro_batch // seq_len))


def activations_fit_on_device(
    config: Any, family: MoEFamily, activation_bytes: int, layer_bytes: int, tokens: int, dtype: torch.dtype,
    device: torch.device,
) -> bool:  # fmt: skip
    """Whether the in and out activation buffers fit in the GPU's free memory beside a layer (x2: loading the next
    while the last is freed) and the working set of a micro-batch of ``tokens``."""
    free, _ = torch.cuda.mem_get_info(device)
    return 2 * activation_bytes + 2 * layer_bytes + working_set(config, family, tokens, dtype) < free


def make_plan(
    model: nn.Module,
    family: MoEFamily,
    shape: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
    micro_batch: int | None,
    tokens_per_micro_batch: int = 8192,
    activations_on_device: bool | None = None,
) -> Plan:
    """Micro-batch size and activation placement; ``activations_on_device`` overrides the choice."""
    n, seq_len = shape
    config: Any = model.config
    hidden: int = config.hidden_size
    act = n * seq_len * hidden * torch.tensor([], dtype=dtype).element_size()
    weights = max(layer_nbytes(layer, dtype) for layer in decoder_layers(model, family.layout))
    mb = micro_batch or micro_batch_size(n, seq_len, tokens_per_micro_batch)
    if activations_on_device is not None:
        on_device = activations_on_device
    elif device.type == "cuda":
        on_device = activations_fit_on_device(config, family, act, weights, mb * seq_len, dtype, device)
    else:
        on_device = True  # host and device are the same memory
    return Plan(activations_on_device=on_device, micro_batch=mb, activation_bytes=act, layer_bytes=weights)
