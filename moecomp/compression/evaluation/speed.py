"""Throughput and memory as the study measures them: prefill tokens/s and decode tokens/s.

prefill_tok_s = prompt tokens / time of one forward pass over a [1, prefill_tokens] prompt
decode_tok_s(b) = b * decode_tokens / time of decode_tokens single-token steps at batch b with a KV cache
Every figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones; prompts are random
token ids (speed does not depend on the text). Peak memory is torch's peak allocated CUDA memory over the
measurements; a CPU has no such counter, so there the process's resident memory is given instead.
This is the "eager" runtime, the study's baseline: the model as transformers loads it, one Python-dispatched
forward per token; served.py measures the same figures as a serving engine would run the model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel

from moecomp.compression.evaluation.spec import SpeedSpec

GIB = 1024**3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_prompt(model: PreTrainedModel, batch: int, length: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=gen).to(device)


class Decoder(Protocol):
    """Greedy decoding in one runtime: ``prefill`` starts a sequence, each ``step`` adds one token."""

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor: ...  # prompt [B, T] -> first new token [B, 1]

    def step(self, token: torch.Tensor) -> torch.Tensor: ...  # token [B, 1] -> next token [B, 1]


class EagerDecoder:
    """The study's baseline: transformers as loaded, a DynamicCache grown by every step."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.cache: Any = None

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=prompt, use_cache=True)  # a fresh cache: decoding extends it in place
        self.cache = out.past_key_values
        return out.logits[:, -1:].argmax(-1)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=token, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1:].argmax(-1)


def greedy(decoder: Decoder, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """The prompt's greedy continuation, ``steps`` + 1 tokens [B, steps + 1] (the prefill gives the first)."""
    tokens = [decoder.prefill(prompt)]
    for _ in range(steps):
        tokens.append(decoder.step(tokens[-1]))
    return torch.cat(tokens, dim=1)


def decode_seconds(decoder: Decoder, prompt: torch.Tensor, steps: int, warmup: int, repeats: int) -> float:
    """Median seconds of ``steps`` greedy single-token steps, each run after its own untimed prefill."""
    device = prompt.device
    times = []
    for run in range(warmup + repeats):
        token = decoder.prefill(prompt)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            token = decoder.step(token)
        _sync(device)
        if run >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_lengths(model: PreTrainedModel, spec: SpeedSpec) -> tuple[int, int]:
    """(prefill prompt length, decode prompt length), both kept inside the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None) or spec.prefill_tokens
    return min(spec.prefill_tokens, limit), max(1, min(spec.decode_prompt_tokens, limit - spec.decode_tokens))


def resident_gib() -> float | None:
    """The process's resident set size (Linux), in GiB."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return None


def measure_speed(model: PreTrainedModel, spec: SpeedSpec) -> dict[str, Any]:
    """Prefill and decode throughput and peak memory of ``model`` on its own device, as loaded ("eager")."""
    device = next(model.parameters()).device
    prefill_len, decode_prompt = decode_lengths(model, spec)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prompt = random_prompt(model, 1, prefill_len, device)
    with torch.inference_mode():
        prefill_s = timed(lambda: model(input_ids=prompt, use_cache=True), device, spec.warmup, spec.repeats)
    result: dict[str, Any] = {
        "runtime": "eager",
        "prefill_tokens": prefill_len,
        "prefill_tok_s": prefill_len / prefill_s,
    }
    result["decode"] = {}
    for batch in spec.decode_batch_sizes:
        prompt = random_prompt(model, batch, decode_prompt, device)
        with torch.inference_mode():
            seconds = decode_seconds(EagerDecoder(model), prompt, spec.decode_tokens, spec.warmup, spec.repeats)
        result["decode"][str(batch)] = {"tok_s": batch * spec.decode_tokens / seconds, "prompt_tokens": decode_prompt}
    result["decode_tok_s"] = result["decode"][str(spec.decode_batch_sizes[0])]["tok_s"]
    result.update(memory(device))
    return result


def memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "memory_measure": "cuda_peak_allocated",
        }
    return {"peak_memory_gib": None, "rss_gib": resident_gib(), "memory_measure": "cpu_rss_not_peak"}
