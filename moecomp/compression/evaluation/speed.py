"""Throughput and memory as the study measures them: prefill tokens/s and decode tokens/s.

prefill_tok_s = prompt tokens / time of one forward pass over a [1, prefill_tokens] prompt
decode_tok_s(b) = b * decode_tokens / time of decode_tokens single-token steps at batch b with a KV cache
Every figure is the median of ``repeats`` timed runs after ``warmup`` untimed ones; prompts are random
token ids (speed does not depend on the text). Peak memory is torch's peak allocated CUDA memory over
the measurements; a CPU has no such counter, so there the process's resident memory is given instead.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from moecomp.compression.evaluation.spec import SpeedSpec

GIB = 1024**3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
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


def _prompt(model: PreTrainedModel, batch: int, length: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=gen).to(device)


@torch.inference_mode()
def _decode_seconds(model: PreTrainedModel, prompt: torch.Tensor, steps: int, warmup: int, repeats: int) -> float:
    """Median seconds of ``steps`` greedy single-token steps, each run after its own untimed prefill."""
    device = prompt.device
    times = []
    for run in range(warmup + repeats):
        out = model(input_ids=prompt, use_cache=True)  # a fresh cache: decoding extends it in place
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)  # token [B, 1]
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(device)
        if run >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    """Prefill and decode throughput and peak memory of ``model`` on its own device."""
    device = next(model.parameters()).device
    limit = getattr(model.config, "max_position_embeddings", None) or spec.prefill_tokens
    prefill_len = min(spec.prefill_tokens, limit)
    decode_prompt = max(1, min(spec.decode_prompt_tokens, limit - spec.decode_tokens))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prompt = _prompt(model, 1, prefill_len, device)
    with torch.inference_mode():
        prefill_s = _timed(lambda: model(input_ids=prompt, use_cache=True), device, spec.warmup, spec.repeats)
    result: dict[str, Any] = {"prefill_tokens": prefill_len, "prefill_tok_s": prefill_len / prefill_s, "decode": {}}
    for batch in spec.decode_batch_sizes:
        prompt = _prompt(model, batch, decode_prompt, device)
        seconds = _decode_seconds(model, prompt, spec.decode_tokens, spec.warmup, spec.repeats)
        result["decode"][str(batch)] = {"tok_s": batch * spec.decode_tokens / seconds, "prompt_tokens": decode_prompt}
    result["decode_tok_s"] = result["decode"][str(spec.decode_batch_sizes[0])]["tok_s"]
    result.update(_memory(device))
    return result


def _memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "memory_measure": "cuda_peak_allocated",
        }
    return {"peak_memory_gib": None, "rss_gib": resident_gib(), "memory_measure": "cpu_rss_not_peak"}
