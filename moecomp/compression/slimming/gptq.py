"""GPTQ (Frantar et al. 2022) over a batch of matrices: every expert of a layer at once.

For each batch entry b: H_b = 2 X_b^T X_b / n_b from the inputs that reached it (:mod:`.statistics`),
scales from the original weights (llm-compressor's observer), then columns are quantized in blocks of
``block_size`` with the error pushed onto the columns not yet quantized through the Cholesky factor of
H_b^-1 (dampened by ``dampening_frac`` * mean diag H_b). The column loop is llm-compressor's own batched
kernel (``quantize_weight``: batched Cholesky, batched block updates, a Triton block kernel on CUDA), so
given the same H and W the result is llm-compressor's to the bit; what moecomp adds is gathering all
experts' Hessians from one fused forward and calling it once per layer instead of once per linear.

An entry without any calibration input has H = 0; it is quantized with H = I (round-to-nearest) and
reported as a fallback, instead of llm-compressor's zeroing of every "dead" column. Columns are quantized in
order of decreasing H_jj (llm-compressor's default ``actorder="static"``; groups stay by column index).
"""

from __future__ import annotations

import torch
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

from moecomp.compression.methods.quantization import GPTQConfig
from moecomp.compression.slimming.qparams import observe_scales, quantization_args
from moecomp.compression.slimming.result import Slimmed
from moecomp.compression.slimming.statistics import InputStats

CHUNK_BYTES = 4 * 1024**3  # working memory of one quantize_weight call (H, W and block buffers, fp32)


def chunk_size(rows: int, cols: int) -> int:
    """Batch entries per call so that H [c, in, in] and three copies of W fit in CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * (cols * cols + 3 * rows * cols)))


def identity_where_empty(hessians: torch.Tensor, counts: torch.Tensor) -> list[int]:
    """Replace the H of entries with no input by I (in place); return those entries."""
    empty = (counts == 0).nonzero().flatten().tolist()
    for b in empty:
        hessians[b] = torch.eye(hessians.shape[-1], dtype=hessians.dtype, device=hessians.device)
    return empty


@torch.no_grad()
def slim(
    config: GPTQConfig, weight: torch.Tensor, stats: InputStats, group_size: int | None, scale_dtype: torch.dtype
) -> Slimmed:
    args = quantization_args(config, group_size, actorder="static")  # llm-compressor's default for GPTQ
    scale, zero_point = observe_scales(weight, args, scale_dtype)  # from the original weights, as llm-compressor does
    batch, rows, cols = weight.shape
    out = torch.empty_like(weight)
    fallbacks: list[int] = []
    step = chunk_size(rows, cols)
    counts = stats.entry_counts(batch)
    for start in range(0, batch, step):
        stop = min(start + step, batch)
        hessians = stats.hessians(start, stop)  # [c, in, in] fp32, a fresh working buffer
        fallbacks += [start + b for b in identity_where_empty(hessians, counts[start:stop])]
        # llm-compressor annotates two values; it returns three (weights, losses, RTN fallback flags)
        quantized, _, rtn = quantize_weight(  # type: ignore[misc]
            weight[start:stop].to(torch.float32, copy=True),  # quantize_weight works in its input
            hessians,
            scale[start:stop],
            zero_point[start:stop],
            None,
            args,
            blocksize=config.block_size,
            percdamp=config.dampening_frac,
        )
        out[start:stop] = quantized.to(weight.dtype)
        fallbacks += [start + b for b in rtn.nonzero().flatten().tolist()]
    return Slimmed(out, scale, args, sorted(set(fallbacks)))
