"""Packed runtimes: W4A16 (pack-quantized int4) and FP8 (float-quantized e4m3) checkpoints served with their
weights kept as stored.

Importing this package registers the "w4a16" and "fp8" experts implementations with transformers' experts
interface.
"""

from moecomp.compression.evaluation.packed import fp8
from moecomp.compression.evaluation.packed.fp8 import FP8Linear
from moecomp.compression.evaluation.packed.loader import load_packed
from moecomp.compression.evaluation.packed.modules import IMPLEMENTATION, W4A16Linear, pack_experts

# Experts implementations that read packed buffers: a model loaded with one keeps no dense weights for another.
IMPLEMENTATIONS = (IMPLEMENTATION, fp8.IMPLEMENTATION)
# The packed runtimes' weight buffers and the dense weights each element stands for (8 int4 values per int32 word):
# what the model computes with, counted as parameters (evaluation.footprint).
WEIGHTS_PER_ELEMENT = {
    "gate_up_packed": 8, "down_packed": 8, "weight_packed": 8, "gate_up_fp8": 1, "down_fp8": 1, "weight_fp8": 1,
}  # fmt: skip

__all__ = [
    "IMPLEMENTATION", "IMPLEMENTATIONS", "WEIGHTS_PER_ELEMENT", "FP8Linear", "W4A16Linear", "fp8", "load_packed",
    "pack_experts",
]  # fmt: skip
