"""Throughput and memory as a serving engine would run a checkpoint: the "served" runtime.

The same figures as speed.py (prefill_tok_s, decode_tok_s per batch size, peak memory), measured with what
a serving engine does that transformers-as-loaded does not:
  - a static KV cache (transformers' StaticCache) allocated once per batch size and reset between runs;
  - on CUDA, the single-token decode step compiled with torch.compile(mode="reduce-overhead"), which
    captures it in a CUDA graph: one graph launch per token instead of thousands of Python-dispatched kernels;
  - fused experts through transformers' experts interface ("grouped_mm" on CUDA in bfloat16).
The prefill runs uncompiled (its shape changes with every prompt; transformers' generate does the same).
On a CPU there is no compile and no graph, only the static cache: the decode then gives exactly the eager
tokens, which the tests check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import Cache, DynamicCache, PreTrainedModel, StaticCache

from moecomp.compression.adapters import FAMILIES
from moecomp.compression.evaluation.packed import IMPLEMENTATIONS as PACKED
from moecomp.compression.evaluation.packed.ops import reserve_scratch
from moecomp.compression.evaluation.spec import SpeedSpec
from moecomp.compression.evaluation.speed import decode_lengths, decode_seconds, greedy, memory, random_prompt, timed

# More batch sizes than dynamo's default recompile limit (8) would otherwise fall back to uncompiled code.
RECOMPILE_LIMIT = 64


def compiles(device: torch.device) -> bool:
    """CUDA graphs exist only on CUDA; on a CPU compiling would cost minutes and measure nothing served."""
    return device.type == "cuda"


def served_experts(model: PreTrainedModel, requested: str | None = None) -> str | None:
    """The experts implementation to serve with: ``requested``, else the packed one a W4A16 or FP8 checkpoint
    loaded with (evaluation.packed: "w4a16", "fp8"), else grouped_mm on CUDA in bfloat16.

    In float32/float16 transformers' grouped_mm falls back, under torch.compile, to a per-expert loop that
    reads expert counts on the host, which a CUDA graph cannot capture: batched_mm captures. On a CPU the
    implementation the model loaded with is kept (it works there, and nothing is compiled).
    """
    if requested is not None:
        return requested
    current = getattr(model.config, "_experts_implementation", None)
    if current in PACKED:  # packed experts keep no dense weights for another kernel to read
        return current
    device = next(model.parameters()).device
    if device.type != "cuda":
        return current
    return "grouped_mm" if model.dtype == torch.bfloat16 else "batched_mm"


@contextmanager
def experts_implementation(model: PreTrainedModel, name: str | None) -> Iterator[str | None]:
    """Run with the experts implementation ``name`` where the model can switch; yields the one in force."""
    current: Any = getattr(model.config, "_experts_implementation", None)  # None: transformers' default
    if name is None or name == current:
        yield current
        return
    model.set_experts_implementation(name)
    try:
        yield model.config._experts_implementation
    finally:
        model.set_experts_implementation(current)


def static_cache(model: PreTrainedModel) -> bool:
    """Whether the model's family decodes alike with a static cache (adapters: MoEFamily.static_cache)."""
    family = FAMILIES.get(getattr(model.config, "model_type", None))  # type: ignore[arg-type]
    return family is None or family.static_cache


def _reads_int4(model: PreTrainedModel) -> bool:
    """Whether any module computes from W4A16 buffers (the only ones whose kernels keep a split-K scratch)."""
    return any(name.endswith("_packed") for name, _ in model.named_buffers())


class ServedDecoder:
    """Greedy decoding with a static KV cache of ``max_len`` positions, the step compiled where ``compile``.

    A family whose logits a static cache changes (static_cache()) gets a dynamic cache and no compile: a CUDA
    graph needs the static cache's fixed shapes, and a faster wrong answer is no figure."""

    def __init__(self, model: PreTrainedModel, max_len: int, compile: bool) -> None:
        self.model, self.max_len = model, max_len
        self.static = static_cache(model)
        self.cache = self._new_cache()
        self.compiled = compile and self.static
        # dynamic=False: each batch size gets its own static graph; dynamo would otherwise turn the batch
        # dimension symbolic on the second size, and CUDA graphs want every shape fixed.
        self._step = torch.compile(self._next_token, mode="reduce-overhead", dynamic=False) if self.compiled else None
        if self.compiled and _reads_int4(model):
            reserve_scratch(next(model.parameters()).device)

    def _new_cache(self) -> Cache:
        config = self.model.config
        return StaticCache(config=config, max_cache_len=self.max_len) if self.static else DynamicCache(config=config)

    def _next_token(self, token: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=token, past_key_values=self.cache, use_cache=True).logits  # [B, 1, V]
        return logits[:, -1:].argmax(-1)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        if self.static:
            self.cache.reset()  # same tensors, zeroed: the graph captured on them stays valid
        else:
            self.cache = self._new_cache()
        logits = self.model(input_ids=prompt, past_key_values=self.cache, use_cache=True, logits_to_keep=1).logits
        return logits[:, -1:].argmax(-1)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        if self._step is None:
            return self._next_token(token)
        # A graph's output is overwritten by its next replay: keep a copy, it is the next step's input.
        return self._step(token).clone()


@contextmanager
def _fresh_compile(device: torch.device) -> Iterator[None]:
    """Start and end with no compiled graphs: those of another model would hold its weights on the device."""
    if not compiles(device):
        yield
        return
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
    finally:
        torch._dynamo.reset()


def _prefill_tok_s(model: PreTrainedModel, spec: SpeedSpec, length: int, device: torch.device) -> float:
    decoder = ServedDecoder(model, length, compile=False)  # the prefill is never compiled (see the docstring)
    prompt = random_prompt(model, 1, length, device)
    return length / timed(lambda: decoder.prefill(prompt), device, max(1, spec.warmup), spec.repeats)


def _decode_tok_s(model: PreTrainedModel, spec: SpeedSpec, batch: int, prompt_len: int, device: torch.device) -> float:
    decoder = ServedDecoder(model, prompt_len + spec.decode_tokens, compile=compiles(device))
    prompt = random_prompt(model, batch, prompt_len, device)
    # At least one untimed run: it compiles, then warms up and records the CUDA graph.
    seconds = decode_seconds(decoder, prompt, spec.decode_tokens, max(1, spec.warmup), spec.repeats)
    return batch * spec.decode_tokens / seconds


def measure_served(model: PreTrainedModel, spec: SpeedSpec, experts: str | None = None) -> dict[str, Any]:
    """The figures of speed.measure_speed in the "served" runtime; ``experts`` overrides served_experts()."""
    device = next(model.parameters()).device
    prefill_len, prompt_len = decode_lengths(model, spec)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result: dict[str, Any] = {"runtime": "served", "prefill_tokens": prefill_len, "decode": {}}
    with torch.no_grad(), _fresh_compile(device), experts_implementation(model, served_experts(model, experts)) as impl:
        result["prefill_tok_s"] = _prefill_tok_s(model, spec, prefill_len, device)
        for batch in spec.decode_batch_sizes:
            tok_s = _decode_tok_s(model, spec, batch, prompt_len, device)
            result["decode"][str(batch)] = {"tok_s": tok_s, "prompt_tokens": prompt_len}
    result["decode_tok_s"] = result["decode"][str(spec.decode_batch_sizes[0])]["tok_s"]
    static = static_cache(model)
    result.update(experts_implementation=impl, compiled=compiles(device) and static, **memory(device))
    result["cache"] = "static" if static else "dynamic (a static cache changes this family's logits)"
    return result


def served_greedy(model: PreTrainedModel, prompt: torch.Tensor, steps: int, experts: str | None = None) -> torch.Tensor:
    """The served runtime's greedy continuation of ``prompt`` [B, steps + 1] (compare with speed.greedy)."""
    device = prompt.device
    with torch.no_grad(), _fresh_compile(device), experts_implementation(model, served_experts(model, experts)):
        decoder = ServedDecoder(model, prompt.shape[1] + steps + 1, compile=compiles(device))
        return greedy(decoder, prompt, steps)
