"""Decode speed of a Mixtral-8x7B-shaped model as served, against the study's eager baseline, on one GPU.

    python benchmarks/served_decode.py --out $OUT/served_decode.json                      # H200, full size
    python benchmarks/served_decode.py --layers 24 --out $OUT/served_decode.json          # fits an 80 GB H100
    python benchmarks/served_decode.py --small --out /tmp/served_small.json               # CPU smoke run

Shape: hidden 4096, intermediate 14336, 8 experts top-2, 32 layers, 32 heads / 8 KV heads, vocab 32000,
bf16 (about 93 GB). Weights are random, made on the GPU: the model is built on the meta device, moved with
``to_empty`` and filled in place with normal(0, 0.02) (norms 1.0, so activations keep their scale; the rotary
buffers are recomputed). Nothing touches the disk. Random weights change no timing: the same kernels run on
the same shapes (routing spreads tokens over experts as a trained router roughly does).

Measured in one process, in this order, each printed as a JSON line and written to --out as it finishes:
  eager    evaluation.speed.measure_speed, the study's baseline (transformers as loaded): prefill at --prefill
           tokens and decode at batch 1 over --eager-tokens tokens (it is slow: few tokens);
  served   evaluation.served.measure_served (static KV cache, decode step compiled with
           mode="reduce-overhead" into a CUDA graph, experts per --experts-implementation): prefill at
           --prefill, then decode at each --batch size over --decode-tokens tokens, one measurement per size
           (each compiles its own graph; "seconds" includes that compile).
Bandwidth limit at batch 1: each decoded token reads every active weight once, so
  limit tok/s = HBM bytes/s / (2 bytes x active parameters), active = attention + router + norms of every layer
  + top-k of its experts + one embedding row + lm_head. The fraction of it reached is printed.
Set TORCH_LOGS=graph_breaks,recompiles to see whether the decode step compiled into one graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import MixtralConfig, MixtralForCausalLM

from moecomp.compression.evaluation.loading import runtime_name
from moecomp.compression.evaluation.served import measure_served, served_experts
from moecomp.compression.evaluation.spec import SpeedSpec
from moecomp.compression.evaluation.speed import measure_speed

FULL = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768)  # fmt: skip
SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024)  # fmt: skip
EXPERTS, TOP_K = 8, 2
# Peak HBM bandwidth, B/s, by device name (longest match first): H200 141 GB HBM3e; H100 SXM5 HBM3.
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12}
DTYPE = torch.bfloat16


def build_model(shape: dict[str, int], device: str) -> MixtralForCausalLM:
    """A bf16 Mixtral of ``shape`` whose random weights are generated on ``device`` (no host copy, no disk)."""
    config = MixtralConfig(**shape, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, rope_theta=1e6)
    with torch.device("meta"):
        model = MixtralForCausalLM(config).to(DTYPE)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    # to_empty left the rotary buffers uninitialised: build them again for this config on the device.
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    return model.eval()


def weight_bytes(shape: dict[str, int]) -> int:
    """Bytes of the bf16 weights of ``shape``, to refuse a model that cannot fit before allocating it."""
    h, i, kv = shape["hidden_size"], shape["intermediate_size"], shape["hidden_size"] // shape["num_attention_heads"]
    layer = 2 * h * h + 2 * h * kv * shape["num_key_value_heads"] + EXPERTS * (3 * h * i + h) + 2 * h
    return 2 * (shape["num_hidden_layers"] * layer + 2 * shape["vocab_size"] * h + h)


def active_params_per_token(model: MixtralForCausalLM) -> int:
    """Parameters one decoded token reads at batch 1: top-k of each layer's experts, one embedding row."""
    total = 0
    for name, param in model.named_parameters():
        if "embed_tokens" in name:
            total += param.shape[-1]
        elif ".experts." in name:
            total += param.numel() * TOP_K // EXPERTS
        else:
            total += param.numel()
    return total


def hbm_bandwidth(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in HBM_BYTES_PER_S.items() if key in name), None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="a tiny shape on the CPU (smoke run; also without a GPU)")
    p.add_argument("--layers", type=int, help="decoder layers (default 32; 24 fits an 80 GB H100)")
    p.add_argument("--experts-implementation", help="transformers experts kernel when served (default grouped_mm)")
    p.add_argument("--prefill", type=int, help="prefill prompt tokens (default 2048)")
    p.add_argument("--decode-tokens", type=int, help="tokens per served decode run (default 128)")
    p.add_argument("--eager-tokens", type=int, help="tokens per eager decode run (default 16: it is slow)")
    p.add_argument("--batch", default=None, help="comma-separated served decode batch sizes (default 1,8,16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--hbm-bandwidth", type=float, help="B/s for the limit (default: by device name, H200 4.8e12)")
    p.add_argument("--out", type=Path, help="write the results here as JSON (rewritten after each measurement)")
    return p.parse_args(argv)


def specs(args: argparse.Namespace) -> tuple[SpeedSpec, list[SpeedSpec]]:
    """The eager spec (batch 1, few tokens) and one served spec per batch size."""
    small = args.small
    common = dict(prefill_tokens=args.prefill or (128 if small else 2048), decode_prompt_tokens=32 if small else 128,
                  warmup=args.warmup, repeats=args.repeats, served=False)  # fmt: skip
    eager = SpeedSpec(**common, decode_tokens=args.eager_tokens or (4 if small else 16), decode_batch_sizes=[1])
    batches = [int(b) for b in (args.batch or ("1,2" if small else "1,8,16")).split(",")]
    tokens = args.decode_tokens or (8 if small else 128)
    return eager, [SpeedSpec(**common, decode_tokens=tokens, decode_batch_sizes=[b]) for b in batches]


class Results:
    """The benchmark's JSON, printed line by line and rewritten after each measurement (a timeout keeps some)."""

    def __init__(self, out: Path | None, header: dict[str, Any]) -> None:
        self.out, self.data = out, {**header, "eager": None, "served": {}}
        self.write()

    def add(self, key: str, value: dict[str, Any], batch: int | None = None) -> None:
        if batch is None:
            self.data[key] = value
        else:
            self.data[key][str(batch)] = value
        print(json.dumps({key: value} if batch is None else {f"{key}@{batch}": value}), flush=True)
        self.write()

    def write(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.data, indent=2) + "\n")


def timed(fn, *args) -> dict[str, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return {**result, "seconds": round(time.perf_counter() - started, 1)}


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    """tok/s per runtime and batch, the batch-1 fraction of the bandwidth limit, served over eager."""
    limit, eager, served = data["limit_tok_s_batch1"], data["eager"], data["served"]
    out: dict[str, Any] = {
        "eager_decode_tok_s_batch1": eager["decode_tok_s"],
        "eager_prefill_tok_s": eager["prefill_tok_s"],
    }
    for batch, result in served.items():
        out[f"served_decode_tok_s_batch{batch}"] = result["decode_tok_s"]
    if "1" in served:
        out["served_prefill_tok_s"] = served["1"]["prefill_tok_s"]
        out["served_over_eager_decode_batch1"] = served["1"]["decode_tok_s"] / eager["decode_tok_s"]
    if limit:
        out["limit_tok_s_batch1"] = limit
        out["eager_fraction_of_limit"] = eager["decode_tok_s"] / limit
        if "1" in served:
            out["served_fraction_of_limit"] = served["1"]["decode_tok_s"] / limit
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.small and not torch.cuda.is_available():
        print("no CUDA device: running the small CPU smoke shape instead (its figures say nothing about serving)")
        args.small = True
    shape = dict(SMALL if args.small else FULL)
    shape["num_hidden_layers"] = args.layers or shape["num_hidden_layers"]
    device = torch.device("cpu" if args.small else "cuda")
    if device.type == "cuda" and weight_bytes(shape) > 0.9 * torch.cuda.mem_get_info(device)[0]:
        free_gb = torch.cuda.mem_get_info(device)[0] / 1e9
        sys.exit(f"{weight_bytes(shape) / 1e9:.0f} GB of weights do not fit in {free_gb:.0f} GB free: pass --layers")
    eager_spec, served_specs = specs(args)

    started = time.perf_counter()
    model = build_model(shape, str(device))
    print(f"built {shape['num_hidden_layers']}-layer model on {device} in {time.perf_counter() - started:.0f} s")
    active = active_params_per_token(model)
    bandwidth = hbm_bandwidth(device, args.hbm_bandwidth)
    results = Results(args.out, {
        "shape": shape, "experts": EXPERTS, "top_k": TOP_K, "dtype": "bfloat16", "runtime": runtime_name(model, device),
        "experts_implementation_eager": model.config._experts_implementation,
        "experts_implementation_served": served_experts(model, args.experts_implementation),
        "active_params_per_token": active, "bytes_per_token_batch1": 2 * active, "hbm_bytes_per_s": bandwidth,
        "limit_tok_s_batch1": bandwidth / (2 * active) if bandwidth else None,
        "eager_spec": eager_spec.model_dump(),
        "served_spec": served_specs[0].model_dump(exclude={"decode_batch_sizes"}),
    })  # fmt: skip
    results.add("eager", timed(measure_speed, model, eager_spec))
    for spec in served_specs:
        results.add(
            "served", timed(measure_served, model, spec, args.experts_implementation), spec.decode_batch_sizes[0]
        )
    results.data["summary"] = summarise(results.data)
    results.write()
    print(json.dumps({"summary": results.data["summary"]}, indent=2))
    return results.data


if __name__ == "__main__":
    main()
