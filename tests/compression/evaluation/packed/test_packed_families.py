"""The packed runtime on every family that slimming supports: a tiny random model of the family, written W4A16
(RTN int4) or FP8 by the streamed slimming pass and loaded packed, gives the logits of stock transformers'
decompressed forward and the same greedy tokens in the eager and in the served runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moecomp.compression.adapters import FAMILIES
from moecomp.compression.evaluation.loading import NO_PACKED_KERNEL_NOTE, load_checkpoint
from moecomp.compression.evaluation.packed import fp8, load_packed, modules
from moecomp.compression.evaluation.served import served_greedy
from moecomp.compression.evaluation.speed import EagerDecoder, greedy
from moecomp.compression.manifest import SCHEMA, write_manifest
from tests.compression.evaluation.packed.conftest import write_fp8, write_w4a16
from tests.compression.tiny_moe import FAMILY_CONFIGS, tiny_model

# the families whose experts the packed runtime serves: every family behind transformers' experts interface (not
# Llama 4, whose experts run every token in their own forward)
PACKED_FAMILIES = [t for t in FAMILY_CONFIGS if FAMILIES[t].layout.experts_call == "routed"]
FORMATS = {"w4a16": (write_w4a16, modules.IMPLEMENTATION), "fp8": (write_fp8, fp8.IMPLEMENTATION)}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("model_type", PACKED_FAMILIES)
def test_packed_checkpoints_are_stock_transformers_on_every_family(model_type: str, fmt: str, tmp_path: Path) -> None:
    write, implementation = FORMATS[fmt]
    source = tmp_path / "source"
    tiny_model(model_type, dtype=torch.bfloat16).save_pretrained(source)
    checkpoint = write(source, tmp_path / fmt)
    packed = load_packed(checkpoint)
    stock = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True).eval()  # gpt-oss: its code
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


@pytest.mark.parametrize("model_type", sorted(set(FAMILY_CONFIGS) - set(PACKED_FAMILIES)))
def test_families_without_a_packed_kernel_load_through_transformers_and_say_so(
    model_type: str, tmp_path: Path, tiny_mixtral_dir: Path
) -> None:
    """An FP8 checkpoint (served packed on any device where a kernel exists) of a family whose experts no packed
    kernel takes: evaluation loads it with transformers, dequantized, the note says why, and load_packed refuses."""
    source = tmp_path / "source"
    tiny_model(model_type, dtype=torch.bfloat16).save_pretrained(source)
    checkpoint = write_fp8(source, tmp_path / "fp8")
    write_manifest(checkpoint, {"schema": SCHEMA})  # moecomp's own checkpoint: its bundled code may run
    AutoTokenizer.from_pretrained(tiny_mixtral_dir).save_pretrained(checkpoint)
    loaded = load_checkpoint(checkpoint, device="cpu")
    assert NO_PACKED_KERNEL_NOTE in loaded.notes
    assert loaded.model.config._experts_implementation != fp8.IMPLEMENTATION
    with pytest.raises(ValueError, match="no packed kernel plugs in"):
        load_packed(checkpoint)
