"""The one table of slimming methods the streamed pass runs: method name -> its module's ``slim`` and traits.

A method module exposes ``slim(config, weight [B, out, in], stats, group_size, scale_dtype) -> Slimmed`` (stats
None for data-free methods; group size and scale dtype used by quantization only); a new method is one module and
one row here. AWQ smooths the whole layer first (:mod:`.awq`), then quantizes each group round-to-nearest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moecomp.compression.methods.quantization import expert_group_size, resolve_group_size
from moecomp.compression.slimming import gptq, magnitude, rtn, sparsegpt, wanda
from moecomp.compression.slimming.groups import WeightGroup


@dataclass(frozen=True)
class SlimmingMethod:
    slim: Callable
    uses_data: bool  # needs a calibration run of the layer (input statistics) before it slims
    quantizes: bool  # writes packed low-bit weights (else dense weights, pruned)
    actorder: str | None = None  # the activation ordering llm-compressor records for this method's scheme
    smooths: bool = False  # rescales the layer's norms and linears (AWQ) before ``slim`` quantizes its groups


METHODS: dict[str, SlimmingMethod] = {
    "gptq": SlimmingMethod(gptq.slim, uses_data=True, quantizes=True, actorder="static"),
    "rtn": SlimmingMethod(rtn.slim, uses_data=False, quantizes=True),
    "fp8": SlimmingMethod(rtn.slim, uses_data=False, quantizes=True),  # round-to-nearest e4m3 per channel
    "awq": SlimmingMethod(rtn.slim, uses_data=True, quantizes=True, smooths=True),
    "magnitude": SlimmingMethod(magnitude.slim, uses_data=False, quantizes=False),
    "wanda": SlimmingMethod(wanda.slim, uses_data=True, quantizes=False),
    "sparsegpt": SlimmingMethod(sparsegpt.slim, uses_data=True, quantizes=False),
}


def group_size_for(config: object, group: WeightGroup, widths: dict[str, int]) -> int | None:
    """Routed experts share one group size dividing every expert width; other linears get their own."""
    requested = getattr(config, "group_size", None)  # FP8: one scale per channel
    if group.scope == "routed_experts":
        routed = [w for name, w in widths.items() if name.startswith(group.module + ".")]
        return expert_group_size(sorted(routed), requested)
    return resolve_group_size(widths[group.name], requested)
