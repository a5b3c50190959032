"""The served runtime (static KV cache; on CUDA a compiled, graph-captured decode step) against eager decoding."""

from __future__ import annotations

import pytest
import torch

from moecomp.compression.adapters import FAMILIES
from moecomp.compression.evaluation.loading import load_checkpoint
from moecomp.compression.evaluation.served import measure_served, served_greedy
from moecomp.compression.evaluation.spec import SpeedSpec
from moecomp.compression.evaluation.speed import EagerDecoder, greedy, measure_speed, random_prompt
from tests.compression.tiny_moe import tiny_model

TINY = SpeedSpec(prefill_tokens=64, decode_tokens=4, decode_prompt_tokens=8, decode_batch_sizes=[1, 2], repeats=1)


@pytest.fixture(scope="module")
def qwen32(tiny_qwen2_moe_dir):
    return load_checkpoint(tiny_qwen2_moe_dir, dtype="float32")


def _eager_greedy(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    with torch.inference_mode():
        return greedy(EagerDecoder(model), prompt, steps)


@pytest.mark.parametrize("family", ["mixtral32", "qwen32"])
def test_served_greedy_decode_gives_the_eager_tokens(family, request):
    model = request.getfixturevalue(family).model
    prompt = random_prompt(model, 2, 12, torch.device("cpu"))
    eager = _eager_greedy(model, prompt, 16)
    served = served_greedy(model, prompt, 16)
    assert served.shape == (2, 17)
    assert torch.equal(served, eager)
    # Not a degenerate continuation: the tiny model does not repeat one token.
    assert len(set(eager[0].tolist())) > 3


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_served_decode_gives_the_eager_tokens_on_every_family(model_type):
    """The served runtime is what the report measures on every family; where a static cache would change a
    family's logits (deepseek_v32's indexer) it decodes with a dynamic cache, uncompiled, and says so."""
    model = tiny_model(model_type)
    prompt = random_prompt(model, 2, 12, torch.device("cpu"))
    assert torch.equal(served_greedy(model, prompt, 8), _eager_greedy(model, prompt, 8))
    spec = TINY.model_copy(update={"decode_batch_sizes": [1]})
    cache = measure_served(model, spec)["cache"]
    assert cache.startswith("static" if FAMILIES[model_type].static_cache else "dynamic")


def test_served_greedy_twice_on_one_model_gives_the_same_tokens(mixtral32):
    """The static cache is reset, not reallocated, between sequences: a second run must not see the first."""
    model = mixtral32.model
    first = served_greedy(model, random_prompt(model, 1, 8, torch.device("cpu")), 6)
    assert torch.equal(served_greedy(model, random_prompt(model, 1, 8, torch.device("cpu")), 6), first)


def test_measure_served_names_its_runtime_and_gives_every_figure(mixtral32):
    result = measure_served(mixtral32.model, TINY)
    assert result["runtime"] == "served" and result["compiled"] is False  # no CUDA graph on a CPU
    assert result["experts_implementation"] == mixtral32.model.config._experts_implementation
    assert result["prefill_tokens"] == 64 and result["prefill_tok_s"] > 0
    assert set(result["decode"]) == {"1", "2"} and result["decode_tok_s"] == result["decode"]["1"]["tok_s"] > 0
    assert result["peak_memory_gib"] is None and result["memory_measure"] == "cpu_rss_not_peak"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_served_decode_is_graph_captured_faster_than_eager_and_gives_its_tokens(tiny_mixtral_dir):
    model = load_checkpoint(tiny_mixtral_dir, device="cuda", dtype="bfloat16").model
    prompt = random_prompt(model, 2, 12, torch.device("cuda"))
    # The prefill and the first compiled step; later bf16 tokens may part where a fused kernel rounds differently.
    assert torch.equal(served_greedy(model, prompt, 16)[:, :2], _eager_greedy(model, prompt, 16)[:, :2])
    spec = TINY.model_copy(update={"decode_tokens": 32, "decode_batch_sizes": [1, 8]})
    served, eager = measure_served(model, spec), measure_speed(model, spec)
    assert served["compiled"] is True and served["experts_implementation"] == "grouped_mm"
    assert served["memory_measure"] == "cuda_peak_allocated" and served["peak_memory_gib"] > 0
    # A tiny model's eager decode is all Python dispatch; one graph launch per token removes most of it.
    assert served["decode_tok_s"] > 2 * eager["decode_tok_s"]
