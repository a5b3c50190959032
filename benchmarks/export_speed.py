"""Export throughput and host memory on a Mixtral-8x7B-shaped checkpoint written to disk (weights are zeros:
only bytes matter here). Exports it three ways (layerwise keep 6 -> stock, uneven counts and a dropped MoE
sub-layer -> remote code) and prints seconds, GB read/written per second and peak RSS of this process.

    .venv/bin/python benchmarks/export_speed.py --small          # tiny dims, seconds
    .venv/bin/python benchmarks/export_speed.py --layers 2       # full Mixtral-8x7B layer shapes (2.8 GB/layer)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import MixtralConfig

from moecomp.compression.export import export_trimmed
from moecomp.compression.structure import Decisions

FULL = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=256)


def zeros(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.bfloat16)


def ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bfloat16)


def timed_export(source: Path, decisions: Decisions, out: Path, queue: Any) -> None:
    """Runs in a fresh process so that its peak RSS is the export's own."""
    start = time.perf_counter()
    export_trimmed(source, decisions, out, manifest={})
    queue.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def write_checkpoint(folder: Path, dims: dict, layers: int) -> int:
    """One safetensors file per layer (a sharded checkpoint with an index), stock per-expert names."""
    config = MixtralConfig(num_hidden_layers=layers, num_local_experts=8, num_experts_per_tok=2, **dims)
    config.save_pretrained(folder)
    h, i, kv = dims["hidden_size"], dims["intermediate_size"], dims["num_key_value_heads"]
    head = h // dims["num_attention_heads"]
    weight_map, total = {}, 0
    for layer in range(layers):
        p = f"model.layers.{layer}."
        t = {p + "input_layernorm.weight": ones(h), p + "post_attention_layernorm.weight": ones(h)}
        for name, shape in (("q", (h, h)), ("k", (kv * head, h)), ("v", (kv * head, h)), ("o", (h, h))):
            t[p + f"self_attn.{name}_proj.weight"] = zeros(shape)
        t[p + "block_sparse_moe.gate.weight"] = zeros((8, h))
        for e in range(8):
            for w, shape in (("w1", (i, h)), ("w3", (i, h)), ("w2", (h, i))):
                t[p + f"block_sparse_moe.experts.{e}.{w}.weight"] = zeros(shape)
        file = f"layer-{layer}.safetensors"
        save_file(t, folder / file, {"format": "pt"})
        weight_map |= dict.fromkeys(t, file)
        total += sum(v.numel() * 2 for v in t.values())
    rest = {"model.embed_tokens.weight": zeros((dims["vocab_size"], h))}
    rest |= {"lm_head.weight": zeros((dims["vocab_size"], h)), "model.norm.weight": ones(h)}
    save_file(rest, folder / "rest.safetensors", {"format": "pt"})
    weight_map |= dict.fromkeys(rest, "rest.safetensors")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total + sum(v.numel() * 2 for v in rest.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    dims, layers = (SMALL, 2) if args.small else (FULL, args.layers)
    cases = {
        "layerwise keep 6 (stock)": Decisions(kept_experts={i: [0, 1, 2, 4, 5, 7] for i in range(layers)}),
        "uneven + layer drop (remote code)": Decisions(kept_experts={0: [1, 2, 3, 4, 5]}, dropped_layers=[layers - 1]),
    }
    with tempfile.TemporaryDirectory(prefix="export-speed-") as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        size = write_checkpoint(source, dims, layers)
        print(f"source: {layers} layers, {size / 1e9:.2f} GB")
        for name, decisions in cases.items():
            out = Path(tmp) / name.split()[0]
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=timed_export, args=(source, decisions, out, queue))
            proc.start()
            seconds, rss = queue.get()
            proc.join()
            written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
            print(
                f"{name}: {seconds:.1f} s, read {size / 1e9 / seconds:.2f} GB/s, wrote {written / 1e9:.2f} GB "
                f"(sha256 included), export process peak RSS {rss:.2f} GiB"
            )


if __name__ == "__main__":
    main()
