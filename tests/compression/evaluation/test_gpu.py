"""The evaluation on CUDA (run on a GPU machine: pytest -m gpu tests/compression/evaluation)."""

from __future__ import annotations

import pytest
import torch

from moecomp.compression.evaluation.run import evaluate
from moecomp.compression.evaluation.spec import EvaluationSpec, SpeedSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_evaluate_on_cuda_measures_peak_memory_and_matches_the_cpu_perplexity(tiny_mixtral_dir):
    spec = EvaluationSpec(
        max_tokens=4096, fidelity_tokens=1024, dtype="float32", tasks=["moecomp_next_verse"], task_limit=40,
        speed=True, speed_settings=SpeedSpec(prefill_tokens=1024, decode_tokens=32, decode_batch_sizes=[1, 8]),
    )  # fmt: skip
    gpu = evaluate(tiny_mixtral_dir, tiny_mixtral_dir, spec, device="cuda")
    cpu = evaluate(tiny_mixtral_dir, None, spec.model_copy(update={"speed": False, "tasks": []}), device="cpu")

    speed = gpu["candidate"]["speed"]
    assert speed["memory_measure"] == "cuda_peak_allocated" and speed["peak_memory_gib"] > 0
    assert speed["decode"]["8"]["tok_s"] > speed["decode"]["1"]["tok_s"]
    assert torch.cuda.get_device_name() in gpu["candidate"]["runtime"]
    ppl_gpu = gpu["candidate"]["perplexity"]["bundled:heldout"]["ppl"]
    ppl_cpu = cpu["candidate"]["perplexity"]["bundled:heldout"]["ppl"]
    assert ppl_gpu == pytest.approx(ppl_cpu, rel=1e-3)
    assert gpu["fidelity"]["top1_agreement"] == 1.0
    assert gpu["relative"]["tasks.moecomp_next_verse.acc"] == 100.0
