"""A packed W4A16 runtime: pack-quantized int4 checkpoints served with their weights kept packed.

Importing this package registers the "w4a16" experts implementation with transformers' experts interface.
"""

from moecomp.compression.evaluation.packed.loader import load_packed
from moecomp.compression.evaluation.packed.modules import IMPLEMENTATION, W4A16Linear, pack_experts

__all__ = ["IMPLEMENTATION", "W4A16Linear", "load_packed", "pack_experts"]
