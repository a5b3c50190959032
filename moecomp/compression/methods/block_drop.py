"""Block Drop (He et al. 2024, arXiv 2406.02500, Sec. 3.2).

discrete:    sim[i] = mean over tokens of cos(h_i, h_{i+1}); drop the ``drop`` blocks with the highest sim.
consecutive: sim[i] = mean over tokens of cos(h_i, h_{i+drop}); drop blocks i .. i+drop-1 for the best i.
h_i = the hidden state entering decoder block i (h_n = the output of the last block).

h_{i+drop} is the output of block i+drop-1, so the window compared is exactly the blocks removed
(the study's code was off by one here). Windows and h_i run over the blocks still present when an
earlier stage dropped some; indices reported are the original ones (a window by its first block).
Consecutive mode keeps ``drop`` copies of the [N, L, H] hidden states on the host.
Iterative (discrete only): ``drop`` passes, each removing the single most similar block left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from moecomp.compression.methods.base import MAX_BLOCKS, ModelShape, ShapeError, StageConfig
from moecomp.compression.observers import LayerInfo, Observer, SelectContext, Trimmer
from moecomp.compression.structure import Decisions

if TYPE_CHECKING:
    from moecomp.compression.planning import Setting
    from moecomp.compression.sizes import Sizes


class BlockDropConfig(StageConfig):
    family: ClassVar[str] = "trimming"
    method: Literal["block_drop"] = "block_drop"
    drop: int = Field(5, ge=1, le=MAX_BLOCKS, description="Number of decoder blocks to remove.")
    mode: Literal["discrete", "consecutive"] = "discrete"
    iterative: bool = Field(False, description="Re-score after each drop instead of one pass (discrete only).")

    @model_validator(mode="after")
    def _iterative_is_discrete(self) -> BlockDropConfig:
        if self.iterative and self.mode == "consecutive":
            raise ValueError("block_drop.iterative is only defined for mode 'discrete'")
        return self

    def check(self, shape: ModelShape) -> None:
        if self.drop >= shape.blocks:
            raise ShapeError("drop", self.drop, f"drop={self.drop} must be below the decoder blocks ({shape.blocks})")
        shape.blocks -= self.drop
        shape.moe_layers = min(shape.moe_layers, shape.blocks)  # the dropped blocks may all have been dense

    def trimmer(self) -> Trimmer:
        return TRIMMER

    def resized(self, sizes: Sizes) -> Sizes:
        return sizes.without_blocks(self.drop)  # the smallest: the estimate stays an upper bound

    def host_buffers(self, setting: Setting, before: Sizes, item: int) -> dict[str, int]:
        """Consecutive mode keeps ``drop`` copies of the calibration activations (the windows' ends)."""
        return {"block_drop windows": self.drop * setting.activation_bytes(item)} if self.mode == "consecutive" else {}


def score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of cos(a_t, b_t); [..., H] -> scalar (float32)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1).sum()


class BlockSimilarity(Observer):
    """cos(h_i, h_{i+1}) for every block; with ``window`` > 1 also cos(h_i, h_{i+window}) per start i."""

    def __init__(self, config: BlockDropConfig, sctx: SelectContext, window: int | None = None) -> None:
        self.config = config
        self.window = window if window is not None else (config.drop if config.mode == "consecutive" else 1)
        self.sums: dict[int, torch.Tensor] = {}  # block (original) -> sum of cos(h_i, h_{i+1})
        self.window_sums: dict[int, torch.Tensor] = {}  # first block of a window (original) -> sum
        self.tokens = 0  # per block
        self.blocks: list[int] = []  # original index of each position
        self._inputs: dict[int, torch.Tensor] = {}  # position -> h at its input (host), window > 1 only

    def observe(self, info: LayerInfo, start: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        if start == 0:
            self.blocks.append(info.index)
        if info.position == 0:
            self.tokens += h_in.shape[:-1].numel()
        self.sums[info.index] = self.sums.get(info.index, 0.0) + score(h_in, h_out).double()  # no device sync
        if self.window > 1:
            self._observe_window(info, start, h_in, h_out)

    def _observe_window(self, info: LayerInfo, start: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        pos = info.position
        if pos not in self._inputs:
            pin = h_in.device.type == "cuda"  # pinned: fast copies both ways
            self._inputs[pos] = torch.empty((info.num_sequences, *h_in.shape[1:]), dtype=h_in.dtype, pin_memory=pin)
            self._inputs.pop(pos - self.window, None)  # no window starting there is still open
        self._inputs[pos][start : start + h_in.shape[0]].copy_(h_in, non_blocking=True)
        first = pos + 1 - self.window  # the window whose last block is this one
        if first >= 0:
            h_first = self._inputs[first][start : start + h_out.shape[0]].to(h_out.device)
            key = self.blocks[first]
            self.window_sums[key] = self.window_sums.get(key, 0.0) + score(h_first, h_out).double()

    def host_bytes(self, activation_bytes: int) -> int:
        return self.window * activation_bytes if self.window > 1 else 0  # the inputs of the open windows

    def similarity(self) -> dict[int, float]:
        return {i: float(s) / self.tokens for i, s in sorted(self.sums.items())}

    def window_similarity(self) -> dict[int, float]:
        if self.window == 1:
            return self.similarity()
        return {i: float(s) / self.tokens for i, s in sorted(self.window_sums.items())}


def select_discrete(similarity: dict[int, float], drop: int) -> list[int]:
    return sorted(sorted(similarity, key=lambda i: (-similarity[i], i))[:drop])


def select_consecutive(windows: dict[int, float], blocks: list[int], drop: int) -> list[int]:
    """The ``drop`` blocks (present ones, in order) of the most similar window (ties: earliest)."""
    first = min(windows, key=lambda i: (-windows[i], i))
    pos = blocks.index(first)
    return blocks[pos : pos + drop]


def select(observer: BlockSimilarity, config: BlockDropConfig, sctx: SelectContext, round_: int = 0) -> Decisions:
    present = len(observer.blocks) + round_  # blocks dropped in earlier rounds were present too
    if config.drop >= present:
        raise ValueError(f"block_drop.drop={config.drop} must be below the number of decoder blocks ({present})")
    if config.mode == "consecutive":
        return Decisions(dropped_blocks=select_consecutive(observer.window_similarity(), observer.blocks, config.drop))
    return Decisions(dropped_blocks=select_discrete(observer.similarity(), 1 if config.iterative else config.drop))


def report(observer: BlockSimilarity, sctx: SelectContext) -> dict[str, Any]:
    result: dict[str, Any] = {"similarity": {str(i): v for i, v in observer.similarity().items()}}
    if observer.config.mode == "consecutive":
        result["similarity"] = {str(i): v for i, v in observer.window_similarity().items()}
        result["adjacent_similarity"] = {str(i): v for i, v in observer.similarity().items()}
    return result


def rounds(config: BlockDropConfig) -> int:
    return config.drop if config.iterative else 1


TRIMMER = Trimmer(rounds=rounds, observer=BlockSimilarity, select=select, report=report)
