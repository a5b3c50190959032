"""Triton W4A16 kernels: int4 weights dequantized in registers, never written out dense.

out[p] = x[p // row_div] @ W[ids[p]].T for S routed pairs, W[e][n, k] = q[n, k] * scale[n, k // g], weights
``packed [E, N, K/8]`` int32 (value j of a word in bits 4j..4j+3, stored as q + 8), ``scale [E, N, K/g]``.
Each K step loads a [K/8 words x N] tile once and splits it into its 8 nibble planes: plane j holds the
columns k = 8i + j, which share the scale of column 8i (g is a multiple of 8), and meets the strided slice
x[:, 8i + j]. Three paths:
  - grouped GEMM (many pairs: prefill, batched decode): pairs sorted by expert and padded to BLOCK_M per
    expert (host-sync free, as vLLM's moe_align_block_size), one program per (M tile of one expert, N tile),
    tl.dot per nibble plane, float32 accumulation; programs past the last real tile exit at once.
  - GEMV (a few pairs, batch-1 decode): one program per (pair, N tile, K split), products summed on the CUDA
    cores, float32 partial sums met atomically (split-K keeps every SM busy when N is small). It reads an
    expert's weights once per pair, where the grouped GEMM reads them once per routed expert but pads each
    expert's run to BLOCK_M rows and sorts the pairs first. So the GEMV runs up to one pair per expert, and up
    to two for experts below SMALL_EXPERT weights. On an H100, in CUDA graphs (w4a16_gemv_h100.json in
    benchmarks/results), 16 pairs over Mixtral-8x7B's 8 experts took 470 us in the grouped GEMM against 782 in
    the GEMV for gate_up (N x K = 117 M), but 398 against 335 for down (58.7 M); Qwen3-30B-A3B's small experts
    stay 2.1-8.6x faster in the GEMV up to 256 pairs (w4a16_paths_h100.md).
    It is bound by instructions per weight, not by bandwidth: each nibble becomes the float 1 + q/16 by a shift
    and a bit select (_unit_nibble), is multiplied into x, and each word's 8 products are summed before the offset
    (against the sum of x) and the scale are applied once. That took 3.7% less time in a decode step's GEMVs
    than converting every nibble to q - 8 (_nibble, as the grouped GEMM does).
  - dense (many pairs: prefill, evaluation over long texts): the experts are dequantized to bf16 by one Triton
    pass (exactly reference.dequantize) and multiplied by torch.nn.functional.grouped_mm, a tensor-core grouped
    GEMM (:mod:`.grouped`, shared with the FP8 experts); the dequantized copy lives for one call (Mixtral-8x7B's
    gate_up: 1.9 GB). Above DENSE_MIN_PAIRS that is several times faster than dequantizing every tile in registers.
Imported only on CUDA (moecomp.compression.evaluation.packed.ops); TRITON_INTERPRET=1 runs it on a CPU.
"""

from __future__ import annotations

import functools

import torch
import triton  # type: ignore[import-not-found, unused-ignore]
import triton.language as tl  # type: ignore[import-not-found, unused-ignore]

from moecomp.compression.evaluation.packed.grouped import dense_grouped_matmul

GEMV_PAIRS_PER_EXPERT = 2  # up to this many routed pairs per small expert, each pair reads its expert's weights
SMALL_EXPERT = 1 << 26  # weights (N x K) of an expert below which the GEMV still wins at two pairs an expert:
# Mixtral-8x7B's down (58.7 M) at 16 pairs, 335 us against the grouped GEMM's 398; its gate_up (117 M) 782 against 470
DOT_BLOCK_K = 128  # grouped GEMM: 16 words per K step, so each nibble plane's tl.dot has K = 16
DENSE_MIN_PAIRS = 512  # from here on (a 256-token prompt at top-2) dequantize, then one grouped GEMM
TARGET_PROGRAMS = 1024  # GEMV: split K until about this many programs run (132 SMs on an H100/H200)


@triton.jit
def _nibble(words, j: tl.constexpr):
    """Value j of each word as float32 q - 8, without an int-to-float conversion (a quarter-rate instruction):
    the nibble as the low mantissa bits of 2**23 is the float 2**23 + q, exactly."""
    bits = ((words >> (4 * j)) & 0xF) | 0x4B000000
    return bits.to(tl.float32, bitcast=True) - 8388616.0  # 2**23 + 8


@triton.jit
def _grouped_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr, pairs_ptr, block_expert_ptr, num_pairs, N, K,
    stride_xm, stride_we, stride_wn, stride_se, stride_sn, stride_om,
    ROW_DIV: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:  # past the last expert's padded tiles
        return
    expert = expert.to(tl.int64)
    pairs = tl.load(pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))  # [BM], num_pairs where padding
    mask_m = pairs < num_pairs
    x_rows = x_ptr + (pairs // ROW_DIV).to(tl.int64)[:, None] * stride_xm  # [BM, 1]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    words_k = tl.arange(0, BLOCK_K // 8)  # word i covers columns 8i .. 8i + 7 of the K step
    w_cols = w_ptr + expert * stride_we + offs_n.to(tl.int64)[None, :] * stride_wn  # [1, BN]
    s_cols = s_ptr + expert * stride_se + offs_n.to(tl.int64)[None, :] * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        words = tl.load(w_cols + (k0 // 8 + words_k)[:, None], mask=mask_n[None, :], other=0)  # [BK/8, BN]
        scale = tl.load(s_cols + ((k0 + words_k * 8) // GROUP)[:, None], mask=mask_n[None, :], other=0.0)
        scale = scale.to(tl.float32)  # [BK/8, BN]
        for j in tl.static_range(8):
            w = (_nibble(words, j) * scale).to(x_ptr.dtype.element_ty)  # [BK/8, BN]: columns k0 + 8i + j
            x = tl.load(x_rows + (k0 + words_k * 8 + j)[None, :], mask=mask_m[:, None], other=0.0)  # [BM, BK/8]
            acc = tl.dot(x, w, acc)
    out = out_ptr + pairs.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _store_sums(total, out_ptr, sums_ptr, counts_ptr, pair, pid_n, offs_n, mask_n, N, stride_om, SPLITS: tl.constexpr):
    """Store a GEMV program's sums ``total`` [BN] of output row ``pair``, columns ``offs_n``.

    One K split stores them. Several add float32 partial sums into ``sums``, a buffer that is all zeros between
    calls: the split that finishes a tile last (``counts`` counts them) takes the totals out, leaving zeros, and
    stores them. So no kernel runs around this one to zero an output and cast it: adding into a zeroed float32
    output took 3.5% more time in a decode step's GEMVs (w4a16_gemv_h100.json)."""
    out = out_ptr + pair.to(tl.int64) * stride_om + offs_n
    if SPLITS == 1:
        tl.store(out, total.to(out_ptr.dtype.element_ty), mask=mask_n)
    else:
        sums = sums_ptr + pair.to(tl.int64) * N + offs_n
        tl.atomic_add(sums, total, mask=mask_n)
        tl.debug_barrier()  # every thread's adds come before the count (released with it)
        tile = counts_ptr + pair * tl.num_programs(1) + pid_n
        if tl.atomic_add(tile, 1) == SPLITS - 1:
            total = tl.atomic_add(sums, 0.0, mask=mask_n)  # read where the adds went (L2), not through L1
            tl.store(out, total.to(out_ptr.dtype.element_ty), mask=mask_n)
            tl.store(sums, tl.zeros_like(total), mask=mask_n)
            tl.store(tile, 0)


@triton.jit
def _unit_nibble(words, j: tl.constexpr):
    """Value j of each word as float32 1 + q/16: the nibble as the top mantissa bits of 1.0 (a shift and a
    bit select; _nibble's subtraction is left to the caller, once a word)."""
    if 4 * j <= 19:
        bits = (words << (19 - 4 * j)) & 0x00780000
    else:
        bits = (words >> (4 * j - 19)) & 0x00780000
    return (bits | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr, ids_ptr, sums_ptr, counts_ptr, N, K_SPLIT,
    stride_xm, stride_we, stride_wn, stride_se, stride_sn, stride_om,
    ROW_DIV: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLITS: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    x_row = x_ptr + (pair // ROW_DIV).to(tl.int64) * stride_xm
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    words_k = tl.arange(0, BLOCK_K // 8)
    w_rows = w_ptr + expert * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
    s_rows = s_ptr + expert * stride_se + offs_n.to(tl.int64)[:, None] * stride_sn
    acc = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
    for step in range(0, K_SPLIT, BLOCK_K):
        k0 = pid_k * K_SPLIT + step
        words = tl.load(w_rows + (k0 // 8 + words_k)[None, :], mask=mask_n[:, None], other=0)  # [BN, BK/8]
        scale = tl.load(s_rows + ((k0 + words_k * 8) // GROUP)[None, :], mask=mask_n[:, None], other=0.0)
        word_dot = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.float32)  # sum over a word's columns of (1 + q/16) x
        x_sum = tl.zeros((BLOCK_K // 8,), dtype=tl.float32)
        for j in tl.static_range(8):
            x = tl.load(x_row + k0 + words_k * 8 + j).to(tl.float32)  # [BK/8]
            word_dot += _unit_nibble(words, j) * x[None, :]
            x_sum += x
        # (1 + q/16) - 1.5 = (q - 8) / 16: the offset comes off once a word, not once a nibble
        acc += (word_dot - 1.5 * x_sum[None, :]) * scale.to(tl.float32)
    total = tl.sum(acc, axis=1) * 16.0
    _store_sums(total, out_ptr, sums_ptr, counts_ptr, pair, pid_n, offs_n, mask_n, N, stride_om, SPLITS)


@triton.jit
def _dequantize_kernel(w_ptr, s_ptr, out_ptr, K_WORDS, SCALES, GROUP: tl.constexpr, BLOCK_W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # over E * N rows
    words_k = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = words_k < K_WORDS
    words = tl.load(w_ptr + row * K_WORDS + words_k, mask=mask, other=0)  # [BW]
    scale = tl.load(s_ptr + row * SCALES + words_k * 8 // GROUP, mask=mask, other=0.0).to(tl.float32)
    j = tl.arange(0, 8)
    bits = ((words[:, None] >> (4 * j)[None, :]) & 0xF) | 0x4B000000  # [BW, 8], as in _nibble
    w = (bits.to(tl.float32, bitcast=True) - 8388616.0) * scale[:, None]  # q * scale, rounded once below
    columns = words_k[:, None] * 8 + j[None, :]
    tl.store(out_ptr + row * K_WORDS * 8 + columns, w.to(out_ptr.dtype.element_ty), mask=mask[:, None])


def dequantize(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """reference.dequantize on the GPU: W [..., N, K] in ``scale``'s dtype."""
    k_words, scales = packed.shape[-1], scale.shape[-1]
    out = torch.empty(*packed.shape[:-1], k_words * 8, dtype=scale.dtype, device=packed.device)
    rows = packed.numel() // k_words
    block_w = 128
    grid = (rows, triton.cdiv(k_words, block_w))
    _dequantize_kernel[grid](
        packed.contiguous(), scale.contiguous(), out, k_words, scales, GROUP=k_words * 8 // scales, BLOCK_W=block_w,
    )  # fmt: skip
    return out


def align_pairs(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs sorted by expert, each expert's run padded to a multiple of ``block_m`` with S (the pair count).

    Returns ``pairs [max_blocks * block_m]`` int32 and ``block_expert [max_blocks]`` int32 (-1 past the end),
    max_blocks = S // block_m + E bounding sum_e ceil(S_e / block_m); tensor ops only, no host sync."""
    num_pairs, device = ids.shape[0], ids.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(0, ids, torch.ones_like(ids))
    padded = (counts + block_m - 1) // block_m * block_m  # [E]
    padded_end = padded.cumsum(0)
    first = counts.cumsum(0) - counts  # [E] rank of each expert's first pair in sorted order
    sorted_ids, order = torch.sort(ids, stable=True)  # [S]
    slots = padded_end[sorted_ids] - padded[sorted_ids] + torch.arange(num_pairs, device=device) - first[sorted_ids]
    max_blocks = num_pairs // block_m + num_experts
    pairs = torch.full((max_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    pairs[slots] = order.to(torch.int32)
    starts = torch.arange(max_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end, starts, right=True)  # padded_end[e-1] <= start < padded_end[e]
    return pairs, torch.where(starts < padded_end[-1], block_expert, -1).to(torch.int32)


def _block_k(k: int, largest: int) -> int:
    """The largest power of two <= ``largest`` dividing K (K is a multiple of 8 in pack-quantized)."""
    block = largest
    while k % block:
        block //= 2
    if block < 16:
        raise ValueError(f"in_features {k} is not a multiple of 16")
    return block


def gemv_splits(num_pairs: int, n: int, k: int, block_n: int, block_k: int, target_programs: int) -> int:
    """How many parts the GEMV splits K into: doubling while the programs stay within ``target_programs``."""
    splits = 1
    while num_pairs * triton.cdiv(n, block_n) * splits * 2 <= target_programs and (k // block_k) % (splits * 2) == 0:
        splits *= 2
    return splits


def _gemv(
    x: torch.Tensor,
    ids: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    row_div: int,
    group: int,
    *,
    block_n: int = 32,
    block_k: int = 256,
    num_warps: int = 4,
    num_stages: int = 3,
    target_programs: int = TARGET_PROGRAMS,
) -> torch.Tensor:
    """The GEMV path; the keyword arguments are its tile (benchmarks/w4a16_gemv.py times the choices: the defaults
    took the least time in a Mixtral-8x7B decode step on an H100, benchmarks/results/w4a16_gemv_h100.json)."""
    num_pairs, n, k = ids.shape[0], packed.shape[1], x.shape[1]
    block_k = _block_k(k, block_k)
    splits = gemv_splits(num_pairs, n, k, block_n, block_k, target_programs)
    grid = (num_pairs, triton.cdiv(n, block_n), splits)
    out = x.new_empty(num_pairs, n)
    sums, counts = _split_scratch(x.device, num_pairs * n, num_pairs * grid[1]) if splits > 1 else (out, ids)
    _gemv_kernel[grid](
        x, packed, scale, out, ids, sums, counts, n, k // splits, x.stride(0), packed.stride(0), packed.stride(1),
        scale.stride(0), scale.stride(1), out.stride(0), ROW_DIV=row_div, GROUP=group, BLOCK_N=block_n,
        BLOCK_K=block_k, SPLITS=splits, num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return out


SCRATCH_FLOATS = 1 << 17  # split GEMVs have at most TARGET_PROGRAMS / 2 tiles, of up to 128 columns: 512 KB


def _split_scratch(device: torch.device, floats: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The zeroed sums and counts of split-K (_store_sums), at least ``floats`` and ``tiles`` long: one
    pair of buffers for every call at the default target (split calls have fewer than TARGET_PROGRAMS tiles)."""
    size = max(SCRATCH_FLOATS, triton.next_power_of_2(floats))
    return _scratch(device, size, max(TARGET_PROGRAMS, triton.next_power_of_2(tiles)))


def reserve_scratch(device: torch.device) -> None:
    """Allocate the split-K scratch now, before torch.compile's cudagraph trees warm a step up: allocated during
    their warm-up it would land in their CUDA graph pool and outlive it, which they refuse
    (benchmarks/results/packed_decode_h100_semaphore_cudagraph_trees_error.log)."""
    _split_scratch(device, 1, 1)


@functools.cache
def _scratch(device: torch.device, floats: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Kept for the life of the process: a CUDA graph that captured a call keeps replaying on these addresses.
    return torch.zeros(floats, dtype=torch.float32, device=device), torch.zeros(tiles, dtype=torch.int32, device=device)


def _grouped(x: torch.Tensor, ids: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, row_div: int, group: int):
    num_pairs, n, k = ids.shape[0], packed.shape[1], x.shape[1]
    small = num_pairs <= 256
    block_m, block_n = (16, 64) if small else (64, 128)
    pairs, block_expert = align_pairs(ids, packed.shape[0], block_m)
    out = torch.empty(num_pairs, n, dtype=x.dtype, device=x.device)
    grid = (block_expert.shape[0], triton.cdiv(n, block_n))
    _grouped_kernel[grid](
        x, packed, scale, out, pairs, block_expert, num_pairs, n, k, x.stride(0), packed.stride(0),
        packed.stride(1), scale.stride(0), scale.stride(1), out.stride(0), ROW_DIV=row_div, GROUP=group,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=DOT_BLOCK_K, num_warps=4 if small else 8, num_stages=3,
    )  # fmt: skip
    return out


def _dense(x: torch.Tensor, ids: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, row_div: int, group: int):
    return dense_grouped_matmul(x, ids, dequantize(packed, scale).to(x.dtype), row_div)  # weight [E, N, K]


PATHS = {"gemv": _gemv, "grouped": _grouped, "dense": _dense}


def path_for(pairs: int, experts: int, n: int, k: int, dtype: torch.dtype) -> str:
    """The kernel path (a key of PATHS) for ``pairs`` routed pairs over ``experts`` experts of N x K weights."""
    if pairs >= DENSE_MIN_PAIRS and dtype == torch.bfloat16:  # grouped_mm's tensor-core path is bf16
        return "dense"
    per_expert = GEMV_PAIRS_PER_EXPERT if n * k < SMALL_EXPERT else 1
    if pairs <= per_expert * experts or k % DOT_BLOCK_K:
        return "gemv"
    return "grouped"


def grouped_matmul(
    x: torch.Tensor,
    ids: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    row_div: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """out [S, N] = x[p // row_div] @ W[ids[p]].T (+ bias[ids[p]]); the arguments of reference.grouped_matmul."""
    k = x.shape[1]
    group = k // scale.shape[-1]
    if packed.shape[-1] * 8 != k or group % 8:
        raise ValueError(f"x has {k} features, weights {packed.shape[-1] * 8}; group {group} must be a multiple of 8")
    path = PATHS[path_for(ids.shape[0], packed.shape[0], packed.shape[1], k, x.dtype)]
    out = path(x, ids, packed, scale, row_div, group)
    if bias is not None:
        out = out + (bias[0] if bias.shape[0] == 1 else bias[ids])
    return out
