"""Tiles for the W4A16 GEMV (the batch-1 decode path), timed on real-sized shapes (CUDA only).

    python benchmarks/w4a16_gemv.py --out $OUT/w4a16_gemv.json

Shapes: one MoE layer's gate_up and down of Mixtral-8x7B (8 x 14336 x 4096, top-2) at 2 and 16 pairs (batch 1
and 8) and of Qwen3-30B-A3B (128 x 768 x 2048, top-8) at 8 pairs, and Mixtral-8x7B's attention linears at one
token. For each tile of triton_kernels._gemv (block_n, block_k, num_warps, num_stages, target_programs: how far K
is split) the result is first checked against reference.grouped_matmul, then timed as served: the calls
captured in one CUDA graph, each on its own copy of the weights so that none is served from L2, replayed
--repeats times; microseconds per call (median) and the weight bytes per second that makes. The tile that makes
a Mixtral-8x7B decode step's GEMV calls fastest is reported as "decode_step", beside the runtime's own choice
("runtime": the path and tile grouped_matmul takes). The grouped GEMM is timed beside the GEMV at 16 pairs,
where the path rule chooses between them. One JSON line per (shape, tile); the best per shape at the end, all
written to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from w4a16_paths import GROUP, random_layer  # noqa: E402

from moecomp.compression.evaluation.packed import reference, triton_kernels  # noqa: E402

# name: (experts, N, K, pairs, row_div, calls in one Mixtral-8x7B decode step at batch 1 after Layer Drop 8/32)
SHAPES = {
    "mixtral gate_up x2": (8, 28672, 4096, 2, 2, 24),
    "mixtral down x2": (8, 4096, 14336, 2, 1, 24),
    "mixtral gate_up x16": (8, 28672, 4096, 16, 2, 0),
    "mixtral down x16": (8, 4096, 14336, 16, 1, 0),
    "mixtral qkv_proj x1": (1, 6144, 4096, 1, 1, 32),  # q, k, v fused (modules.fuse_siblings)
    "mixtral o_proj x1": (1, 4096, 4096, 1, 1, 32),
    "qwen3 gate_up x8": (128, 1536, 2048, 8, 8, 0),
    "qwen3 down x8": (128, 2048, 768, 8, 1, 0),
}
UNCACHED_BYTES = 512 << 20  # the copies of a shape's touched weights add up to this much at least (H200 L2: 50 MB)


def _graph_us(calls: list, repeats: int) -> float:
    """Median microseconds per call of ``calls`` captured in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls[:2]:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / len(calls))
    return statistics.median(times)


def _shape_inputs(experts: int, n: int, k: int, pairs: int, row_div: int, gen: torch.Generator) -> dict[str, Any]:
    top_k = row_div if row_div > 1 else min(experts, 2 if experts == 8 else 8)
    tokens = max(1, pairs // top_k)
    ids = torch.stack([torch.randperm(experts, device="cuda", generator=gen)[:top_k] for _ in range(tokens)])
    ids = ids.reshape(-1)[:pairs].contiguous()
    touched = len(ids.unique()) * n * k // 2
    copies = max(2, min(64, -(-UNCACHED_BYTES // touched)))
    weights = [random_layer(experts, n, k, gen) for _ in range(copies)]
    x = torch.randn(pairs // row_div, k, device="cuda", generator=gen).to(torch.bfloat16)
    ref = reference.grouped_matmul(x, ids, *weights[0], row_div, None).float()
    return {"ids": ids, "weights": weights, "x": x, "ref": ref, "bytes": pairs * n * (k // 2 + k // GROUP * 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-n", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--block-k", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--stages", type=int, nargs="+", default=[3])
    parser.add_argument("--targets", type=int, nargs="+", default=[0, 1024], help="target_programs (0: no split)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--budget-s", type=float, default=40.0, help="stop sweeping a decode-step shape after this long"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    for name in args.shapes:
        experts, n, k, pairs, row_div, _ = SHAPES[name]
        inputs = _shape_inputs(experts, n, k, pairs, row_div, gen)
        x, ids = inputs["x"], inputs["ids"]
        default = [partial(triton_kernels.grouped_matmul, x, ids, *w, row_div) for w in inputs["weights"]]
        rows.append({"shape": name, "kernel": "runtime", "path": triton_kernels.path_for(pairs, experts, n, k, x.dtype),
                     "us": round(_graph_us(default, args.repeats), 1)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        if pairs >= 16:
            grouped = [partial(triton_kernels._grouped, x, ids, *w, row_div, GROUP) for w in inputs["weights"]]
            rows.append({"shape": name, "kernel": "grouped", "us": round(_graph_us(grouped, args.repeats), 1)})
            print(json.dumps(rows[-1]), flush=True)
        began = time.monotonic()
        budget = args.budget_s if SHAPES[name][-1] else args.budget_s / 2
        timed: dict[tuple[Any, ...], dict[str, Any]] = {}
        tiles = itertools.product(args.block_n, args.block_k, args.stages, args.targets)
        for block_n, block_k, stages, target in tiles:
            if time.monotonic() - began > budget:
                break
            warps = 4 if block_n * block_k // 8 <= 1024 else 8  # at most 8 words a thread
            tile = dict(block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages, target_programs=target)
            row: dict[str, Any] = {"shape": name, "kernel": "gemv", **tile}
            # Tiles that give the same K split run the same kernel: time it once.
            splits = triton_kernels.gemv_splits(pairs, n, k, block_n, triton_kernels._block_k(k, block_k), target)
            row["splits"] = splits
            same = (block_n, block_k, warps, stages, splits)
            if same in timed:
                rows.append({**row, **{key: timed[same][key] for key in ("us", "gb_s", "max_err", "error")
                                       if key in timed[same]}})  # fmt: skip
                continue
            try:
                out = triton_kernels._gemv(x, ids, *inputs["weights"][0], row_div, GROUP, **tile).float()
                row["max_err"] = float((out - inputs["ref"]).abs().max() / inputs["ref"].abs().max())
                if row["max_err"] > 1e-2:
                    raise ValueError(f"wrong result: relative error {row['max_err']:.3g}")
                calls = [partial(triton_kernels._gemv, x, ids, *w, row_div, GROUP, **tile) for w in inputs["weights"]]
                row["us"] = round(_graph_us(calls, args.repeats), 1)
                row["gb_s"] = round(inputs["bytes"] / row["us"] / 1e3, 1)
            except Exception as error:  # noqa: BLE001 - a tile that does not compile or fit is a result too
                row["error"] = str(error).splitlines()[0][:200]
            rows.append(row)
            timed[same] = row
            print(json.dumps(row), flush=True)
            if "us" in row and row["us"] < best.get(name, {}).get("us", float("inf")):
                best[name] = row
        del inputs
        torch.cuda.empty_cache()
        if args.out:  # after every shape: a run cut short keeps what it measured
            result = {"device": torch.cuda.get_device_name(), "rows": rows, "best": best}
            args.out.write_text(json.dumps({**result, "decode_step": decode_step(rows)}) + "\n")
    print(json.dumps({"best": best, "decode_step": decode_step(rows)}, indent=1), flush=True)


def decode_step(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The one tile with the least GEMV time in a Mixtral-8x7B decode step at batch 1 (SHAPES' call counts), among
    the tiles timed on every shape of the step, beside the runtime's time for the same calls."""
    weights = {name: shape[-1] for name, shape in SHAPES.items() if shape[-1]}
    totals: dict[str, float] = {}
    seen: dict[str, set[str]] = {}
    tiles: dict[str, dict[str, Any]] = {}
    runtime = 0.0
    for row in rows:
        if row["shape"] not in weights or "us" not in row:
            continue
        if row["kernel"] == "runtime":
            runtime += weights[row["shape"]] * row["us"]
            continue
        keys = ("block_n", "block_k", "num_warps", "num_stages", "target_programs")
        tile = {key: row[key] for key in keys}
        key = json.dumps(tile, sort_keys=True)
        totals[key] = totals.get(key, 0.0) + weights[row["shape"]] * row["us"]
        seen.setdefault(key, set()).add(row["shape"])
        tiles[key] = tile
    complete = [key for key in totals if seen[key] == set(weights)]
    if not complete:
        return {"runtime_us": round(runtime, 1)}
    key = min(complete, key=totals.__getitem__)
    return {"tile": tiles[key], "us": round(totals[key], 1), "runtime_us": round(runtime, 1)}


if __name__ == "__main__":
    main()
