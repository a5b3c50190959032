"""Benchmark of the trimming calibration passes: wall time, tokens/s, peak host RSS, peak device memory.

Weights are generated deterministically per layer on the device (seeded by tensor name), so a
Mixtral-8x7B-shaped model never has to exist on disk. Runs each method's pass through
``run_trimming`` (expert drop, layer drop, block drop), the shared one-pass computing all scores,
consecutive block drop (host-side window), and times reading real safetensors layers of the same
shape from disk (two layers written to a temporary folder in the stock per-expert format).

    .venv/bin/python benchmarks/trim.py --small --out /tmp/trim_small.json          # CPU, seconds
    python benchmarks/trim.py --out benchmarks/results/trim_h200.json               # CUDA: Mixtral-8x7B, 128 x 2048
    python benchmarks/trim.py --config path/to/config.json --samples 32 --out x.json  # any supported config
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from moecomp.compression.adapters import get_adapter
from moecomp.compression.engine import calibrate
from moecomp.compression.lazy_checkpoint import FUSED_FROM, SafetensorsSource, layer_prefix
from moecomp.compression.methods.block_drop import BlockDropConfig, BlockSimilarity
from moecomp.compression.methods.expert_drop import ExpertDropConfig, ExpertScores
from moecomp.compression.methods.layer_drop import LayerDropConfig, LayerSimilarity
from moecomp.compression.observers import SelectContext
from moecomp.compression.structure import Decisions
from moecomp.compression.trimming import run_trimming

SHAPES: dict[str, dict[str, Any]] = {
    "mixtral-8x7b": dict(
        model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
    ),
    "small": dict(
        model_type="mixtral", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
        vocab_size=512, max_position_embeddings=512,
    ),
}  # fmt: skip


class RandomSource:
    """A WeightSource whose tensors are generated on the device, seeded by name (norms = 1, biases = 0)."""

    def __init__(self, config: PretrainedConfig, seed: int = 0) -> None:
        self.config, self.family, self.seed = config, get_adapter(config), seed
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        self.shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict(keep_vars=True).items()}

    def module_tensors(
        self, prefix: str, names: list[str], kept: list[int] | None, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        return {name: self._make(prefix + name, kept, device, dtype) for name in names}

    def _make(self, full: str, kept: list[int] | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        shape = list(self.shapes[full])
        parent = full.rpartition(".")[0]
        layout = self.family.layout
        if kept is not None and parent.endswith((layout.experts, layout.router)):
            shape[0] = len(kept)
        if len(shape) == 1:
            fill = 1.0 if full.endswith("norm.weight") else 0.0
            return torch.full(shape, fill, device=device, dtype=dtype)
        generator = torch.Generator(device).manual_seed(self.seed + zlib.crc32(full.encode()))
        tensor = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return tensor.mul_(shape[-1] ** -0.5)  # unit-variance outputs for unit-variance inputs


def make_config(args: argparse.Namespace) -> PretrainedConfig:
    if args.config:
        config = AutoConfig.from_pretrained(args.config)
    else:
        values = dict(SHAPES["small" if args.small else args.shape])
        config = AutoConfig.for_model(values.pop("model_type"), **values)
    if args.layers:
        config.num_hidden_layers = args.layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[: args.layers]
    return config


class Meter:
    """Wall time, peak host RSS (VmHWM, reset per phase where the kernel allows) and peak device memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Meter:
        _reset_host_peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall = time.perf_counter() - self.start
        self.host_gib = _host_peak_bytes() / 2**30
        cuda = self.device.type == "cuda"
        self.device_gib = torch.cuda.max_memory_allocated(self.device) / 2**30 if cuda else None


def _reset_host_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then covers the whole process so far


def _host_peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def method_stages(config: PretrainedConfig, small: bool) -> dict[str, Any]:
    family = get_adapter(config)
    n_moe, n_experts = len(family.moe_layers(config)), family.num_experts(config)
    keep = max(family.top_k(config), n_experts * 3 // 4)
    return {
        "expert_drop": ExpertDropConfig(keep=keep),
        "layer_drop": LayerDropConfig(drop=max(1, n_moe // 4)),
        "block_drop": BlockDropConfig(drop=max(1, config.num_hidden_layers // 6)),
        "block_drop_consecutive": BlockDropConfig(drop=max(2, config.num_hidden_layers // 8), mode="consecutive"),
    }


def run_method(name: str, stage: Any, source: RandomSource, ids: torch.Tensor, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    with Meter(device) as meter:
        decisions, _ = run_trimming(
            None, [stage], ids, device=device, dtype=args.dtype, source=source, micro_batch=args.micro_batch
        )
    return _row(name, meter, ids, decisions)


def run_shared(stages: dict[str, Any], source: RandomSource, ids: torch.Tensor, args: argparse.Namespace) -> dict:
    """One pass computing all three methods' scores (the recipe engine's one-shot case)."""
    device = torch.device(args.device)
    sctx = SelectContext(family=source.family, config=source.config, prior=Decisions())
    observers = [
        ExpertScores(stages["expert_drop"], sctx),
        LayerSimilarity(stages["layer_drop"], sctx),
        BlockSimilarity(stages["block_drop"], sctx),
    ]
    with Meter(device) as meter:
        calibrate(source, ids, observers, device=device, dtype=args.dtype, micro_batch=args.micro_batch)
    return _row("shared_one_pass", meter, ids, Decisions())


def _row(name: str, meter: Meter, ids: torch.Tensor, decisions: Decisions) -> dict:
    row = {
        "pass": name,
        "wall_s": round(meter.wall, 3),
        "tokens_per_s": round(ids.numel() / meter.wall, 1),
        "peak_host_rss_gib": round(meter.host_gib, 3),
        "peak_device_gib": None if meter.device_gib is None else round(meter.device_gib, 3),
        "decisions": decisions.to_json(),
    }
    device = "" if meter.device_gib is None else f"  device {meter.device_gib:6.2f} GiB"
    speed = f"{row['tokens_per_s']:12.0f} tok/s"
    print(f"{name:24s} {row['wall_s']:8.2f} s  {speed}  host {row['peak_host_rss_gib']:6.2f} GiB{device}", flush=True)
    return row


def disk_names(source: RandomSource, idx: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module tensors of layer ``idx`` -> the stock on-disk names (per-expert gate/up/down, family renames)."""
    family, prefix = source.family, layer_prefix(source.family, idx)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        parent, _, leaf = name.rpartition(".")
        if parent == family.layout.experts and leaf in FUSED_FROM:
            parts = FUSED_FROM[leaf]
            for e in range(tensor.shape[0]):
                for p, chunk in zip(parts, tensor[e].chunk(len(parts), dim=0), strict=True):
                    out[_to_disk(family, f"{prefix}{parent}.{e}.{getattr(family.disk, p)}.weight")] = chunk.clone()
        else:
            out[_to_disk(family, prefix + name)] = tensor
    return out


def _to_disk(family: Any, name: str) -> str:
    for disk, module in family.disk.renames:
        name = name.replace(module, disk)
    return name


def run_disk(source: RandomSource, args: argparse.Namespace, layers: int = 2) -> dict:
    """Write ``layers`` decoder layers as safetensors shards (per-expert format), then time reading them."""
    device = torch.device(args.device)
    first = layer_prefix(source.family, 0)
    layer_names = [name[len(first) :] for name in source.shapes if name.startswith(first)]
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        folder = Path(tmp)
        source.config.save_pretrained(folder)
        weight_map: dict[str, str] = {}
        for idx in range(layers):
            tensors = source.module_tensors(
                layer_prefix(source.family, idx), layer_names, None, torch.device("cpu"), args.dtype
            )
            shard = f"model-{idx:05d}.safetensors"
            on_disk = disk_names(source, idx, tensors)
            save_file(on_disk, str(folder / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(on_disk, shard))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        nbytes = sum((folder / f).stat().st_size for f in set(weight_map.values()))
        reader = SafetensorsSource(folder)
        with Meter(device) as meter:
            for idx in range(layers):
                reader.module_tensors(layer_prefix(source.family, idx), layer_names, None, device, args.dtype)
    gib = nbytes / 2**30
    label = f"disk_read_{layers}_layers"
    print(f"{label:24s} {meter.wall:8.2f} s  {gib / meter.wall:8.2f} GiB/s ({gib:.2f} GiB, page cache warm)")
    return {"pass": "disk_read", "layers": layers, "bytes": nbytes, "wall_s": round(meter.wall, 3),
            "gib_per_s": round(gib / meter.wall, 3), "note": "files just written: page cache is warm"}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny config on CPU, 8 x 64 tokens, fp32")
    parser.add_argument("--shape", default="mixtral-8x7b", choices=sorted(SHAPES))
    parser.add_argument("--config", help="a config.json (folder or file) of any supported family")
    parser.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (quick checks)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per micro-batch (default: auto)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"])
    parser.add_argument("--passes", default="expert_drop,layer_drop,block_drop,shared,block_drop_consecutive,disk")
    parser.add_argument("--tmp-dir", default=None, help="where the disk-read mode writes its two layers")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.small:
        args.samples, args.seq_len = min(args.samples, 8), min(args.seq_len, 64)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    args.dtype = getattr(torch, args.dtype or ("float32" if args.small else "bfloat16"))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = make_config(args)
    source = RandomSource(config)
    ids = torch.randint(0, config.vocab_size, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    stages = method_stages(config, args.small)
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{platform.machine()} CPU"
    )
    print(f"{config.model_type} hidden {config.hidden_size} layers {config.num_hidden_layers} on {device_name}; "
          f"{args.samples} x {args.seq_len} tokens, {args.dtype}")  # fmt: skip
    rows = []
    for name in args.passes.split(","):
        if name in stages:
            rows.append(run_method(name, stages[name], source, ids, args))
        elif name == "shared":
            rows.append(run_shared(stages, source, ids, args))
        elif name == "disk":
            rows.append(run_disk(source, args))
    result = {
        "device": device_name,
        "dtype": str(args.dtype),
        "config": {k: getattr(config, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers")},
        "tokens": ids.numel(),
        "shape": [args.samples, args.seq_len],
        "stages": {name: stage.model_dump() for name, stage in stages.items()},
        "passes": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
