"""Time of each W4A16 kernel path on real-sized experts, and the path grouped_matmul picks (CUDA only).

    python benchmarks/w4a16_paths.py --out $OUT/w4a16_paths.json

For Mixtral-8x7B's experts (8 x 14336 x 4096, top-2) and Qwen3-30B-A3B's (128 x 768 x 2048, top-8), at decode
batches of 1 to 32 tokens: the gate_up and down projections of one MoE layer through each of
triton_kernels.PATHS (gemv, grouped; dense from DENSE_MIN_PAIRS), random packed weights, each token routed to
top-k distinct random experts. Each figure is the median of --repeats timed calls (CUDA events) after warm-up.
One JSON line per (shape, tokens): microseconds per path and the path picked; written to --out at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

SHAPES = {"mixtral-8x7b": (8, 4096, 14336, 2), "qwen3-30b-a3b": (128, 2048, 768, 8)}  # E, H, I, top-k
GROUP = 128  # shared with w4a16_gemv.py


def _time_us(call, repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def random_layer(experts: int, n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    words = torch.randint(-(2**31), 2**31 - 1, (experts, n, k // 8), dtype=torch.int32, device="cuda", generator=gen)
    scale = (0.002 + 0.004 * torch.rand(experts, n, k // GROUP, device="cuda", generator=gen)).to(torch.bfloat16)
    return words, scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from moecomp.compression.evaluation.packed import triton_kernels

    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for shape, (experts, hidden, intermediate, top_k) in SHAPES.items():
        projections = {"gate_up": (2 * intermediate, hidden, top_k), "down": (hidden, intermediate, 1)}
        weights = {name: random_layer(experts, n, k, gen) for name, (n, k, _) in projections.items()}
        for tokens in args.tokens:
            ids = torch.stack([torch.randperm(experts, device="cuda", generator=gen)[:top_k] for _ in range(tokens)])
            ids = ids.reshape(-1).contiguous()
            row: dict = {"shape": shape, "tokens": tokens, "pairs": ids.numel(), "distinct": len(ids.unique())}
            for path, run in triton_kernels.PATHS.items():
                if path == "dense" and ids.numel() < triton_kernels.DENSE_MIN_PAIRS // 8:
                    continue  # dequantizes every expert: far off the others at decode sizes
                total = 0.0
                for name, (_n, k, row_div) in projections.items():
                    packed, scale = weights[name]
                    x = torch.randn(ids.numel() // row_div, k, device="cuda", generator=gen).to(torch.bfloat16)
                    total += _time_us(lambda: run(x, ids, packed, scale, row_div, GROUP), args.repeats)  # noqa: B023
                row[f"{path}_us"] = round(total, 1)
            row["picked"] = {name: triton_kernels.path_for(ids.numel(), experts, n, k, torch.bfloat16)
                             for name, (n, k, _row_div) in projections.items()}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
