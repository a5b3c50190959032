"""Decode speed and memory of a Mixtral-8x7B-shaped model slimmed by Layer Drop 8/32 + W4A16 g128, served packed.

    python benchmarks/packed_decode.py --out $OUT/packed_decode.json                  # H200: baseline + packed
    python benchmarks/packed_decode.py --eager-layers 0 --out $OUT/packed_decode.json # packed only (any 80 GB GPU)
    python benchmarks/packed_decode.py --small --out /tmp/packed_small.json           # CPU smoke run

The slimmed model: 32 decoder layers that all keep attention; the MoE sub-layers of --dropped (8 layers) are
removed as moecomp represents it (structure.drop_moe_sublayer: identity norm, zero MLP); the other 24 keep
8 experts top-2. Every expert and attention linear is int4 symmetric, group 128, kept packed
(evaluation.packed: experts fused as gate_up [E, 2I, H/8] int32 + scales, down [E, H, I/8] + scales; the
linears as W4A16Linear, q/k/v fused as load_packed fuses them); embeddings, norms, routers and lm_head stay
bf16. Weights are random and made on the GPU (random int32 words, scales in [0.002, 0.006], bf16 normal(0, 0.02),
norms 1): no checkpoint, no disk.

Measured, in one process, each printed as a JSON line and written to --out as it finishes:
  eager   the baseline: served_decode.py's bf16 full model (--eager-layers, default 32) measured by
          evaluation.speed.measure_speed (transformers as loaded), then freed;
  packed  evaluation.served.measure_served with the "w4a16" experts implementation (static KV cache, decode
          step compiled with mode="reduce-overhead" into a CUDA graph, Triton W4A16 kernels): prefill at
          --prefill tokens, decode at each --batch size; peak_memory_gib is torch.cuda.max_memory_allocated.
The summary gives packed decode tok/s at batch 1 over eager's, and the peak memory (targets: >= 6.05x, <= 23 GiB).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import MixtralConfig, MixtralForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))

from served_decode import EXPERTS, FULL, SMALL, TOP_K, Results, build_model, specs, timed  # noqa: E402

from moecomp.compression.adapters import get_adapter  # noqa: E402
from moecomp.compression.evaluation.packed import IMPLEMENTATION, W4A16Linear, pack_experts  # noqa: E402
from moecomp.compression.evaluation.packed.modules import fuse_siblings  # noqa: E402
from moecomp.compression.evaluation.served import measure_served  # noqa: E402
from moecomp.compression.evaluation.speed import measure_speed  # noqa: E402
from moecomp.compression.structure import Decisions, apply_decisions, decoder_layers  # noqa: E402

GROUP = 128
DROPPED = [3, 7, 11, 15, 19, 23, 27, 31]  # every fourth MoE sub-layer: 8 of 32
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
GIB = 2**30


def _packed(rows: int, cols: int, experts: int | None = None) -> dict[str, torch.Tensor]:
    """Meta words [.., rows, cols/8] int32 and scales [.., rows, cols/g] bf16 (filled once on the device)."""
    lead = () if experts is None else (experts,)
    words = torch.empty(*lead, rows, cols // 8, dtype=torch.int32, device="meta")
    scale = torch.empty(*lead, rows, max(1, cols // GROUP), dtype=torch.bfloat16, device="meta")
    return {"packed": words, "scale": scale}


def _pack_layer(layer: torch.nn.Module, config: MixtralConfig) -> None:
    """Attention linears -> W4A16Linear; experts (if the MoE sub-layer is kept) -> packed buffers."""
    attention = layer.get_submodule("self_attn")
    for name in ATTENTION:
        dense = getattr(attention, name)
        parts = _packed(dense.out_features, dense.in_features)
        setattr(attention, name, W4A16Linear(parts["packed"], parts["scale"], None))
    experts = getattr(getattr(layer, "mlp", None), "experts", None)
    if experts is not None:
        h, i, e = config.hidden_size, config.intermediate_size, config.num_local_experts
        gate_up, down = _packed(2 * i, h, e), _packed(h, i, e)
        pack_experts(experts, {"gate_up_packed": gate_up["packed"], "gate_up_scale": gate_up["scale"],
                               "down_packed": down["packed"], "down_scale": down["scale"]})  # fmt: skip


def _fill(model: torch.nn.Module, device: str) -> None:
    """Random weights in place on ``device``: int32 words over their whole range, scales, bf16 normal(0, 0.02)."""
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.dtype == torch.int32:
                tensor.random_(-(2**31), 2**31 - 1, generator=gen)
            elif name.endswith("_scale"):
                tensor.uniform_(0.002, 0.006, generator=gen)
            elif name.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, 0.02, generator=gen)


def build_packed_model(shape: dict[str, int], dropped: list[int], device: str) -> MixtralForCausalLM:
    """The Layer Drop + W4A16 model of ``shape``, its packed weights generated on ``device``."""
    config = MixtralConfig(**shape, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, rope_theta=1e6)
    layout = get_adapter(config).layout
    with torch.device("meta"):
        model = MixtralForCausalLM(config).to(torch.bfloat16)
    apply_decisions(model, Decisions(dropped_layers=dropped), layout)
    for layer in decoder_layers(model, layout):
        _pack_layer(layer, config)
    fuse_siblings(model)  # as load_packed does
    model.to_empty(device=device)
    _fill(model, device)
    with torch.device(device):  # to_empty left the rotary buffers uninitialised
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    model.set_experts_implementation(IMPLEMENTATION)
    return model.eval()


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a tiny shape on the CPU (smoke run; also without a GPU)")
    p.add_argument("--dropped", default=None, help="comma-separated MoE sub-layers dropped (default 8 of 32)")
    p.add_argument("--eager-layers", type=int, help="layers of the bf16 eager baseline (default 32; 0: skip it)")
    p.add_argument("--prefill", type=int, help="prefill prompt tokens (default 2048)")
    p.add_argument("--decode-tokens", type=int, help="tokens per served decode run (default 128)")
    p.add_argument("--eager-tokens", type=int, help="tokens per eager decode run (default 16: it is slow)")
    p.add_argument("--batch", default=None, help="comma-separated served decode batch sizes (default 1,8,16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the results here as JSON (rewritten after each measurement)")
    return p.parse_args(argv)


def _eager_baseline(shape: dict[str, int], layers: int, spec: Any, device: str) -> dict[str, Any]:
    """served_decode.py's eager bf16 measurement of the full model, which is then freed."""
    model = build_model({**shape, "num_hidden_layers": layers}, device)
    result = timed(measure_speed, model, spec)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {**result, "layers": layers}


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    packed, eager = data["packed"], data["eager"]
    out: dict[str, Any] = {f"packed_decode_tok_s_batch{b}": r["decode_tok_s"] for b, r in packed.items()}
    if packed:
        first = next(iter(packed.values()))
        out["packed_prefill_tok_s"] = first["prefill_tok_s"]
        out["peak_memory_gib"] = max(r["peak_memory_gib"] or 0.0 for r in packed.values()) or None
    if eager and "1" in packed:
        out["eager_decode_tok_s_batch1"] = eager["decode_tok_s"]
        out["packed_over_eager_decode_batch1"] = packed["1"]["decode_tok_s"] / eager["decode_tok_s"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.small and not torch.cuda.is_available():
        print("no CUDA device: running the small CPU smoke shape instead (its figures say nothing about serving)")
        args.small = True
    shape = dict(SMALL if args.small else FULL)
    device = "cpu" if args.small else "cuda"
    dropped = [int(i) for i in args.dropped.split(",")] if args.dropped else ([1] if args.small else DROPPED)
    eager_layers = shape["num_hidden_layers"] if args.eager_layers is None else args.eager_layers
    eager_spec, served_specs = specs(args)
    results = Results(args.out, {"shape": shape, "experts": EXPERTS, "top_k": TOP_K, "group_size": GROUP,
                                 "dropped_moe_layers": dropped, "experts_implementation": IMPLEMENTATION,
                                 "eager_spec": eager_spec.model_dump()})  # fmt: skip
    results.data["packed"] = {}
    if eager_layers:
        results.add("eager", _eager_baseline(shape, eager_layers, eager_spec, device))
    started = time.perf_counter()
    model = build_packed_model(shape, dropped, device)
    results.data["packed_model_gib"] = model_bytes(model) / GIB
    print(f"built packed model ({model_bytes(model) / GIB:.2f} GiB) in {time.perf_counter() - started:.0f} s")
    for spec in served_specs:
        result = timed(measure_served, model, spec, IMPLEMENTATION)
        results.add("packed", result, spec.decode_batch_sizes[0])
    results.data["summary"] = summarise(results.data)
    results.write()
    print(results.data["summary"])
    return results.data


if __name__ == "__main__":
    main()
