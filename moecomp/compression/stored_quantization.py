"""Checkpoints stored quantized that moecomp reads dequantized: the family's ``dequantize_on_read`` formats.

mxfp4 (OCP microscaling FP4; gpt-oss as published): a fused expert tensor ``<name>`` of shape ``[E, in, out]`` is
stored as ``<name>_blocks`` ``[E, out, in / 32, 16]`` uint8 (two FP4 E2M1 codes a byte, 32 values a group) and
``<name>_scales`` ``[E, out, in / 32]`` uint8 (one E8M0 exponent a group, biased by 127):

    w[e, 32 g + j, r] = fp4(code of value j of group g in row r) * 2 ** (scales[e, r, g] - 127)

decoded by transformers' own ``convert_moe_packed_tensors`` (what ``Mxfp4Config(dequantize=True)`` runs when it
loads such a checkpoint) to bf16, in which every such value is exact. The expert axis is 0 in both the stored
parts and the decoded tensor, so kept experts are selected before decoding (a layer's dropped experts are never
decoded). A reader decodes one layer's tensors when it reads them, never the whole model at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from moecomp.compression.adapters import MoEFamily
from moecomp.compression.adapters.family import quant_method


@dataclass(frozen=True)
class StoredFormat:
    """How one quantization method stores a tensor in parts, and how the parts decode."""

    method: str  # the config's quantization_config.quant_method
    suffixes: tuple[str, ...]  # a tensor ``<name>`` is stored as ``<name><suffix>`` for each suffix, in this order
    decode: Callable[..., torch.Tensor]  # the parts, in ``suffixes`` order -> the dequantized tensor
    dtype: torch.dtype  # what ``decode`` returns
    decoded_as: str  # whose decoding ``decode`` is, for the note
    shape: Callable[..., list[int]]  # the parts' shapes, in ``suffixes`` order -> the decoded tensor's shape

    def parts(self, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Dequantized tensor name -> its stored parts, for every name stored in this format among ``names``."""
        present = set(names)
        first, *rest = self.suffixes
        stems = (name.removesuffix(first) for name in present if name.endswith(first))
        complete = [stem for stem in stems if all(stem + suffix in present for suffix in rest)]
        return {stem: tuple(stem + suffix for suffix in self.suffixes) for stem in complete}

    def note(self) -> str:
        """What the manifest and the job say about a checkpoint read in this format."""
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"the source checkpoint's experts were stored as {self.method}; they were dequantized to {dtype} "
            f"({self.decoded_as}) before compression, so the output holds no {self.method} weights"
        )


def _decode_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # transformers' own decoder: the exact tensors its dequantizing loader puts in GptOssExperts ([E, in, out]).
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)


def _mxfp4_shape(blocks: list[int], scales: list[int]) -> list[int]:
    *lead, out, groups, group_bytes = blocks  # [E, out, in / 32, 16] -> [E, in, out]
    return [*lead, groups * group_bytes * 2, out]


MXFP4 = StoredFormat(
    "mxfp4",
    ("_blocks", "_scales"),
    _decode_mxfp4,
    torch.bfloat16,
    "as transformers' Mxfp4Config(dequantize=True) does",
    _mxfp4_shape,
)
FORMATS: dict[str, StoredFormat] = {MXFP4.method: MXFP4}


def stored_format(config: Any, family: MoEFamily) -> StoredFormat | None:
    """The format the checkpoint's weights are read dequantized from, where its family declares it; else None."""
    method = quant_method(config)
    return FORMATS[method] if method in family.dequantize_on_read and method in FORMATS else None


def without_quantization(config: Any) -> Any:
    """``config`` as the dequantized model has it: no ``quantization_config`` (edited in place; returned)."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def read_decoded(
    fmt: StoredFormat,
    read: Callable[[str], torch.Tensor],
    parts: tuple[str, ...],
    rows: list[int] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One dequantized tensor from its stored ``parts`` (each read by ``read``), only experts ``rows`` (axis 0)
    selected before decoding, decoded on ``device``."""
    tensors = [read(name) for name in parts]
    if rows is not None:
        index = torch.tensor(rows)
        tensors = [t.index_select(0, index) for t in tensors]  # [E, ...] -> [len(rows), ...]
    return fmt.decode(*(t.to(device) for t in tensors))
