"""The packed runtime on every family that slimming supports: a tiny random model of the family, written W4A16
(RTN int4) or FP8 by the streamed slimming pass and loaded packed, gives the logits of stock transformers'
decompressed forward and the same greedy tokens in the eager and in the served runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from moecomp.compression.evaluation.packed import fp8, load_packed, modules
from moecomp.compression.evaluation.served import served_greedy
from moecomp.compression.evaluation.speed import EagerDecoder, greedy
from tests.compression.evaluation.packed.conftest import write_fp8, write_w4a16
from tests.compression.tiny_moe import SLIMMING_FAMILIES, tiny_model

FORMATS = {"w4a16": (write_w4a16, modules.IMPLEMENTATION), "fp8": (write_fp8, fp8.IMPLEMENTATION)}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("model_type", SLIMMING_FAMILIES)
def test_packed_checkpoints_are_stock_transformers_on_every_family(model_type: str, fmt: str, tmp_path: Path) -> None:
    write, implementation = FORMATS[fmt]
    source = tmp_path / "source"
    tiny_model(model_type, dtype=torch.bfloat16).save_pretrained(source)
    checkpoint = write(source, tmp_path / fmt)
    packed = load_packed(checkpoint)
    stock = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    assert packed.config._experts_implementation == implementation
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = packed(ids).logits.float(), stock(ids).logits.float()
    # The same stored weights and the same arithmetic on the CPU: exact (the dequantized weights are stock's).
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Each runtime decodes as it decodes stock. (Served and eager may part on a near tie: a static cache sums
    # attention in another order, and FP8's per-token input scales can round that apart; stock does the same.)
    prompt = ids[:, :12]
    with torch.inference_mode():
        assert torch.equal(greedy(EagerDecoder(packed), prompt, 6), greedy(EagerDecoder(stock), prompt, 6))
    assert torch.equal(served_greedy(packed, prompt, 6), served_greedy(stock, prompt, 6))
