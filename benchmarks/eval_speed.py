"""Speed and memory of a Mixtral-8x7B-shaped model before and after Layer Drop, as the study measures them.

    python benchmarks/eval_speed.py --device cuda --out benchmarks/results/eval_speed_h200.json   # full size
    python benchmarks/eval_speed.py --small --out /tmp/eval_speed_small.json                    # CPU smoke run

Full size: hidden 4096, intermediate 14336, 8 experts, top-2, 32 layers, 32 heads / 8 KV heads, vocab
32000, bf16, random weights generated on the device (about 93 GB; nothing touches the disk). The
layer-dropped variant removes the MoE sub-layer (post-attention norm + MoE) of ``--drop`` layers with
moecomp's own ``structure.drop_moe_sublayer``, the code the exported checkpoint runs: that layer then
computes h + Attention(Norm(h)) and its experts are freed. Both are measured in one process with
``evaluation.speed.measure_speed``: prefill tokens/s on one 2048-token prompt, decode tokens/s at
batch 1 (and --decode-batch), median of --repeats runs after a warm-up, peak allocated CUDA memory.
The study (He et al. 2024, arXiv 2406.02500) reports 1.19x for Layer Drop 8/32 alone in bf16.
Random weights change no timing: the same kernels run on the same shapes whatever the values.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import MixtralConfig, MixtralForCausalLM

from moecomp.compression.adapters import get_adapter
from moecomp.compression.evaluation.footprint import active_params
from moecomp.compression.evaluation.loading import runtime_name
from moecomp.compression.evaluation.spec import SpeedSpec
from moecomp.compression.evaluation.speed import measure_speed
from moecomp.compression.structure import decoder_layers, drop_moe_sublayer

FULL = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768)  # fmt: skip
SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024)  # fmt: skip
STUDY_LAYER_DROP_8_OF_32_SPEEDUP = 1.19


def build_model(shape: dict[str, int], device: str, dtype: torch.dtype) -> MixtralForCausalLM:
    """A randomly initialised Mixtral of ``shape``, created directly on ``device`` in ``dtype``."""
    config = MixtralConfig(**shape, num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate bf16 at once: an fp32 Mixtral-8x7B would not fit
    try:
        with torch.device(device):
            model = MixtralForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def drop_layers(model: MixtralForCausalLM, layers: list[int]) -> None:
    """Remove the MoE sub-layer of ``layers`` the way moecomp's exported checkpoints do, and free it."""
    layout = get_adapter(model.config).layout
    blocks = decoder_layers(model, layout)
    for idx in layers:
        drop_moe_sublayer(blocks[idx], layout)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(model: MixtralForCausalLM, spec: SpeedSpec, label: str) -> dict[str, Any]:
    device = next(model.parameters()).device
    started = time.perf_counter()
    result = measure_speed(model, spec)
    result.update(
        label=label,
        params_total=sum(p.numel() for p in model.parameters()),
        params_active=active_params(model),
        runtime=runtime_name(model, device),
        seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(result), flush=True)
    return result


def speedups(full: dict[str, Any], dropped: dict[str, Any]) -> dict[str, float]:
    out = {
        "prefill": dropped["prefill_tok_s"] / full["prefill_tok_s"],
        "decode": dropped["decode_tok_s"] / full["decode_tok_s"],
    }
    for batch in full["decode"]:
        out[f"decode_batch_{batch}"] = dropped["decode"][batch]["tok_s"] / full["decode"][batch]["tok_s"]
    if full.get("peak_memory_gib") and dropped.get("peak_memory_gib"):
        out["peak_memory_ratio"] = dropped["peak_memory_gib"] / full["peak_memory_gib"]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a tiny model with short prompts (CPU smoke run)")
    p.add_argument("--device", default=None, help="default: cuda for full size, cpu with --small")
    p.add_argument("--layers", type=int, help="decoder layers (default 32, 4 with --small)")
    p.add_argument("--drop", type=int, help="MoE sub-layers removed, the last ones (default layers / 4)")
    p.add_argument("--prefill", type=int, help="prefill prompt tokens (default 2048, 128 with --small)")
    p.add_argument("--decode-tokens", type=int, help="tokens per decode run (default 128, 16 with --small)")
    p.add_argument("--decode-batch", default="1", help="comma-separated decode batch sizes (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    shape = dict(SMALL if args.small else FULL)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    n_layers = shape["num_hidden_layers"]
    drop = args.drop if args.drop is not None else n_layers // 4
    device = args.device or ("cpu" if args.small else "cuda")
    spec = SpeedSpec(
        prefill_tokens=args.prefill or (128 if args.small else 2048),
        decode_tokens=args.decode_tokens or (16 if args.small else 128),
        decode_batch_sizes=[int(b) for b in args.decode_batch.split(",")],
        decode_prompt_tokens=32 if args.small else 128,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    torch.manual_seed(0)
    started = time.perf_counter()
    model = build_model(shape, device, torch.bfloat16)
    print(f"built {n_layers}-layer model on {device} in {time.perf_counter() - started:.0f} s", flush=True)
    full = measure(model, spec, "original")
    dropped_layers = list(range(n_layers - drop, n_layers))
    drop_layers(model, dropped_layers)
    dropped = measure(model, spec, f"layer_drop {drop}/{n_layers}")
    result = {
        "shape": shape, "experts": 8, "top_k": 2, "dtype": "bfloat16", "device": device,
        "speed_settings": spec.model_dump(), "dropped_moe_layers": dropped_layers,
        "original": full, "layer_dropped": dropped, "speedup": speedups(full, dropped),
        "study_speedup_layer_drop_8_of_32": STUDY_LAYER_DROP_8_OF_32_SPEEDUP,
    }  # fmt: skip
    print(json.dumps({"speedup": result["speedup"]}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
