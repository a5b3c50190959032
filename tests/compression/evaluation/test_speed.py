from __future__ import annotations

import pytest
import torch

from moecomp.compression.evaluation.loading import load_checkpoint
from moecomp.compression.evaluation.spec import SpeedSpec
from moecomp.compression.evaluation.speed import measure_speed

TINY = SpeedSpec(prefill_tokens=64, decode_tokens=4, decode_prompt_tokens=8, decode_batch_sizes=[1, 2], repeats=1)


def test_speed_reports_prefill_and_decode_per_batch_size_and_says_how_memory_was_measured(mixtral32):
    result = measure_speed(mixtral32.model, TINY)
    assert result["prefill_tokens"] == 64 and result["prefill_tok_s"] > 0
    assert set(result["decode"]) == {"1", "2"} and result["decode_tok_s"] == result["decode"]["1"]["tok_s"] > 0
    # A CPU has no peak-allocation counter: the report says so instead of inventing a figure.
    assert result["peak_memory_gib"] is None and result["memory_measure"] == "cpu_rss_not_peak"
    assert result["rss_gib"] > 0


def test_prefill_is_capped_at_the_models_context(mixtral32):
    spec = TINY.model_copy(update={"prefill_tokens": 4096, "decode_batch_sizes": [1]})
    assert measure_speed(mixtral32.model, spec)["prefill_tokens"] == mixtral32.model.config.max_position_embeddings


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_speed_reports_peak_allocated_memory(tiny_mixtral_dir):
    model = load_checkpoint(tiny_mixtral_dir, device="cuda").model
    result = measure_speed(model, TINY)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024**3
    assert result["memory_measure"] == "cuda_peak_allocated" and result["peak_memory_gib"] >= weights
