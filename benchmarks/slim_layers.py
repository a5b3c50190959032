"""Per-layer slimming time and peak GPU memory: moecomp's streamed, MoE-batched pass against plain llm-compressor.

Both backends run through the same entry point, :func:`moecomp.compression.pipeline.compress`, on the same model
folder and the same calibration batch, one recipe ``[{method, backend}]`` at a time, in one process:

- ``moecomp``: the layer-streaming engine, each layer's experts slimmed at once (:mod:`moecomp.compression.slimming`);
- ``llmcompressor``: the whole model loaded on the host, experts linearized, llm-compressor's ``oneshot`` (sequential
  pipeline), the path the study's users stitch together themselves.

Figures per run: the pass's wall time (load, calibrate, slim, write, reload check: ``pass_s``), the stage's own time
as each backend reports it (``stage_s``: moecomp counts the slimming math, llm-compressor the whole ``oneshot``),
both divided by the model's layers, and the peak GPU memory of the pass (torch.cuda.max_memory_allocated).

    python benchmarks/make_random_checkpoint.py --preset qwen3-30b-a3b --layers 2 --out /dev/shm/q3-2
    python benchmarks/slim_layers.py --model /dev/shm/q3-2 --methods gptq,rtn,sparsegpt --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from moecomp.compression.context import RunContext
from moecomp.compression.pipeline import compress
from moecomp.compression.recipe import Recipe


def run_one(model: Path, method: str, backend: str, samples: int, seq_len: int, device: str, scratch: Path) -> dict:
    recipe = Recipe.model_validate(
        {"stages": [{"method": method, "backend": backend}], "calibration": {"samples": samples, "seq_len": seq_len}}
    )
    out = scratch / f"{method}-{backend}"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    manifest = compress(model, recipe, out, device=device, ctx=RunContext())
    wall = time.perf_counter() - started
    shutil.rmtree(out)
    layers = manifest["source"]["num_hidden_layers"]
    slim_pass = manifest["timings"]["passes"][-1]
    stage = manifest["stages"][-1]
    return {
        "method": method,
        "backend": backend,
        "layers": layers,
        "compress_s": round(wall, 2),
        "pass_s": slim_pass["seconds"],
        "pass_s_per_layer": round(slim_pass["seconds"] / layers, 2),
        "stage_s_per_layer": round(stage["seconds"] / layers, 2),
        "peak_gpu_gib": slim_pass.get("peak_gpu_gib"),
        "fallbacks": len(stage["results"]["fallbacks"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--methods", default="gptq,rtn,sparsegpt,wanda")
    parser.add_argument("--backends", default="moecomp,llmcompressor")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slim-layers-", dir=args.out.parent) as scratch:
        for method in args.methods.split(","):
            for backend in args.backends.split(","):
                row = run_one(args.model, method, backend, args.samples, args.seq_len, args.device, Path(scratch))
                rows.append(row)
                print(json.dumps(rows[-1]), flush=True)
    for method in args.methods.split(","):
        by = {r["backend"]: r for r in rows if r["method"] == method}
        if {"moecomp", "llmcompressor"} <= by.keys():
            ours, ref = by["moecomp"], by["llmcompressor"]
            print(
                f"{method}: pass per layer {ours['pass_s_per_layer']} s vs {ref['pass_s_per_layer']} s "
                f"({ref['pass_s'] / ours['pass_s']:.2f}x); peak GPU {ours['peak_gpu_gib']} vs {ref['peak_gpu_gib']} GiB"
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    result = {"device": device, "model": str(args.model), "samples": args.samples, "seq_len": args.seq_len}
    args.out.write_text(json.dumps({**result, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
