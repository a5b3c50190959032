"""Write a random-weight bf16 checkpoint of a real MoE shape, never holding the whole model in host memory.

Names and shapes come from the model built on the meta device, translated to the on-disk convention that
``save_pretrained`` uses (transformers 5 fuses experts in memory, ``mlp.experts.gate_up_proj [E, 2I, H]``, but
writes one tensor per expert: ``experts.{e}.gate_proj/up_proj/down_proj`` for Qwen3-MoE and OLMoE,
``block_sparse_moe.experts.{e}.w1/w3/w2`` for Mixtral, GLM-4.5's like Qwen3-MoE's; gpt-oss stores them fused as
in memory, in bf16 here, not the hub's mxfp4). Each tensor is generated on the GPU when there is one
(else the CPU) with a generator seeded by its name, moved to the host, added to the current shard, and the shard
is written with ``safetensors.torch.save_file`` once full. Norm weights are 1.0, all other weights randn * 0.02.
The folder also gets ``config.json``, ``model.safetensors.index.json`` and the bundled demo model's tokenizer
(vocabulary 8192, so the config's ``vocab_size`` is 8192 whatever the preset).

    .venv/bin/python benchmarks/make_random_checkpoint.py --self-check                  # CPU, seconds
    .venv/bin/python benchmarks/make_random_checkpoint.py --preset qwen3-30b-a3b --layers 2 --out /tmp/q3
    python benchmarks/make_random_checkpoint.py --preset mixtral-8x7b --out /data/mixtral-random --shard-gb 4
    .venv/bin/python benchmarks/make_random_checkpoint.py --preset qwen3-small --out /tmp/q3s    # 16 MB, a CPU run
    python benchmarks/make_random_checkpoint.py --preset glm-4.5-air --layers 8 --out /dev/shm/glm   # 33 GB of 211
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    Glm4MoeConfig,
    GptOssConfig,
    MixtralConfig,
    OlmoeConfig,
    PretrainedConfig,
    Qwen3MoeConfig,
)

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "moecomp" / "assets" / "models" / "tiny-mixtral"  # moecomp.assets.DEMO_MODEL
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCAB_SIZE = 8192  # the bundled tokenizer's vocabulary
TOKEN_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)  # <|endoftext|> in the bundled tokenizer
DTYPE = torch.bfloat16
INDEX_NAME = "model.safetensors.index.json"

PRESETS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "qwen3-30b-a3b": (Qwen3MoeConfig, dict(
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
    )),
    # Qwen3-MoE's layout at a size a CPU runs in seconds (benchmarks/real_size_service.sh's validation run):
    # widths divisible by 128, so GPTQ/AWQ group size 128 applies as at real size.
    "qwen3-small": (Qwen3MoeConfig, dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, max_position_embeddings=4096,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
    )),
    "olmoe-1b-7b": (OlmoeConfig, dict(
        hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
        max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
    )),
    "mixtral-8x7b": (MixtralConfig, dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
    )),
    # openai/gpt-oss-20b's config.json. Its experts are written in bf16, fused as in memory, not as the hub's mxfp4
    # blocks and scales: moecomp refuses every method on mxfp4 experts (dequantize first, see adapters/gpt_oss.py).
    "gpt-oss-20b": (GptOssConfig, dict(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
        attention_bias=True, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_parameters={
            "rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": False, "original_max_position_embeddings": 4096,
        }, tie_word_embeddings=False,
    )),  # layer_types: GptOssConfig's default, sliding and full attention alternating from layer 0
    "gpt-oss-small": (GptOssConfig, dict(
        hidden_size=256, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, num_local_experts=8, num_experts_per_tok=2, sliding_window=32, attention_bias=True,
        max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 150000.0}, tie_word_embeddings=False,
    )),  # sliding window 32: shorter than a CPU run's calibration sequences, so the window matters there too
    # zai-org/GLM-4.5-Air's config.json (its one multi-token-prediction layer, which transformers does not load,
    # left out). head_dim is given: hidden / heads would be 42.
    "glm-4.5-air": (Glm4MoeConfig, dict(
        hidden_size=4096, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=46,
        num_attention_heads=96, num_key_value_heads=8, head_dim=128, partial_rotary_factor=0.5,
        n_routed_experts=128, num_experts_per_tok=8, n_shared_experts=1, first_k_dense_replace=1, n_group=1,
        topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.0, attention_bias=True, use_qk_norm=False,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=False,
    )),
    "glm-4.5-air-small": (Glm4MoeConfig, dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, partial_rotary_factor=0.5, n_routed_experts=8,
        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
        norm_topk_prob=True, routed_scaling_factor=1.0, attention_bias=True, use_qk_norm=False,
        max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, tie_word_embeddings=False,
    )),
}  # fmt: skip

# Tiny shapes of the same model types, for --self-check (compared against save_pretrained).
TINY: dict[str, dict[str, Any]] = {
    "qwen3-30b-a3b": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4),
    "qwen3-small": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4),
    "olmoe-1b-7b": dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, num_experts=4, num_experts_per_tok=2),
    "mixtral-8x7b": dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, num_local_experts=4),
    "gpt-oss-20b": dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2),
    "gpt-oss-small": dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, num_local_experts=4),
    "glm-4.5-air": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_routed_experts=4,
                        num_experts_per_tok=2),
    "glm-4.5-air-small": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_routed_experts=4,
                              num_experts_per_tok=2),
}  # fmt: skip


@dataclass(frozen=True)
class DiskLayout:
    """How a model type names its per-expert MLP on disk (``{moe}.experts.{e}.{gate|up|down}.weight``)."""

    moe: str
    gate: str
    up: str
    down: str


# None: the experts are stored fused, as in memory (gpt-oss: gate_up_proj [E, H, 2I] and the biases).
DISK_LAYOUTS: dict[str, DiskLayout | None] = {
    "qwen3_moe": DiskLayout("mlp", "gate_proj", "up_proj", "down_proj"),
    "olmoe": DiskLayout("mlp", "gate_proj", "up_proj", "down_proj"),
    "mixtral": DiskLayout("block_sparse_moe", "w1", "w3", "w2"),
    "glm4_moe": DiskLayout("mlp", "gate_proj", "up_proj", "down_proj"),
    "gpt_oss": None,
}


@dataclass(frozen=True)
class Spec:
    """One tensor to write: its on-disk name and shape."""

    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return DTYPE.itemsize * int(torch.Size(self.shape).numel())


def make_config(preset: str, layers: int | None = None, tiny: bool = False) -> PretrainedConfig:
    """The preset's config class with vocab 8192 and the bundled tokenizer's special ids."""
    cls, values = PRESETS[preset]
    values = {**values, **(TINY[preset] if tiny else {}), "vocab_size": VOCAB_SIZE, **TOKEN_IDS}
    if layers is not None:
        values["num_hidden_layers"] = layers
    config = cls(**values)
    config.dtype = DTYPE
    return config


def meta_state(config: PretrainedConfig) -> tuple[str, dict[str, tuple[int, ...]]]:
    """The architecture name and the in-memory state-dict shapes, from a model built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.get_text_config().tie_word_embeddings:
        shapes.pop("lm_head.weight", None)  # save_pretrained drops the tied copy
    return type(model).__name__, shapes


def disk_specs(name: str, shape: tuple[int, ...], layout: DiskLayout | None) -> Iterator[Spec]:
    """Translate one in-memory tensor into the tensors that save_pretrained writes for it."""
    if layout is None or ".mlp." not in name:
        yield Spec(name, shape)
        return
    prefix, _, leaf = name.partition(".mlp.")
    moe = f"{prefix}.{layout.moe}"
    if leaf == "experts.gate_up_proj":  # [E, 2I, H]: gate rows first, then up rows
        experts, two_i, hidden = shape
        for e in range(experts):
            yield Spec(f"{moe}.experts.{e}.{layout.gate}.weight", (two_i // 2, hidden))
            yield Spec(f"{moe}.experts.{e}.{layout.up}.weight", (two_i // 2, hidden))
    elif leaf == "experts.down_proj":  # [E, H, I]
        experts, hidden, inter = shape
        for e in range(experts):
            yield Spec(f"{moe}.experts.{e}.{layout.down}.weight", (hidden, inter))
    elif leaf.startswith("experts."):
        raise ValueError(f"unknown fused expert tensor {name} {shape}: teach disk_specs about it")
    else:
        yield Spec(f"{moe}.{leaf}", shape)


def plan(config: PretrainedConfig) -> tuple[str, list[Spec]]:
    """The architecture name and every tensor to write, in state-dict order."""
    architecture, shapes = meta_state(config)
    layout = DISK_LAYOUTS[config.model_type]
    return architecture, [spec for name, shape in shapes.items() for spec in disk_specs(name, shape, layout)]


def assign_shards(specs: list[Spec], shard_bytes: int) -> list[list[Spec]]:
    """Greedy split in order; a shard is closed once it reaches shard_bytes."""
    shards: list[list[Spec]] = [[]]
    size = 0
    for spec in specs:
        if size >= shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def make_tensor(spec: Spec, device: torch.device, seed: int) -> torch.Tensor:
    """Norm weights are ones; anything else randn * 0.02 from a generator seeded by the name. Returned on CPU."""
    if "norm" in spec.name.rsplit(".", 2)[-2]:
        return torch.ones(spec.shape, dtype=DTYPE)
    generator = torch.Generator(device).manual_seed(seed + zlib.crc32(spec.name.encode()))
    tensor = torch.randn(spec.shape, generator=generator, device=device, dtype=DTYPE).mul_(0.02)
    return tensor.cpu()


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if name.startswith("model.layers.") else None


def write_shards(shards: list[list[Spec]], out: Path, device: torch.device, seed: int, layers: int) -> int:
    """Generate and write every shard; prints one line per finished decoder layer. Returns bytes written."""
    start, written, current = time.perf_counter(), 0, None
    for filename, shard in zip(shard_names(len(shards)), shards, strict=True):
        tensors: dict[str, torch.Tensor] = {}
        for spec in shard:
            layer = layer_of(spec.name)
            if layer != current and current is not None:
                _progress(f"layer {current + 1}/{layers}", written, start)
            current = layer
            tensors[spec.name] = make_tensor(spec, device, seed)
            written += spec.nbytes
        save_file(tensors, str(out / filename), metadata={"format": "pt"})
        _progress(f"wrote {filename} ({len(tensors)} tensors)", written, start)
        del tensors
    return written


def _progress(what: str, written: int, start: float) -> None:
    print(f"  {what:<52} {written / 2**30:8.2f} GiB  {time.perf_counter() - start:7.1f} s", flush=True)


def write_index(shards: list[list[Spec]], out: Path) -> None:
    """The index, also for a single shard, so that readers need only one code path."""
    names = shard_names(len(shards))
    weight_map = {spec.name: filename for filename, shard in zip(names, shards, strict=True) for spec in shard}
    total = sum(spec.nbytes for shard in shards for spec in shard)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def write_config_and_tokenizer(config: PretrainedConfig, architecture: str, out: Path) -> None:
    config.architectures = [architecture]
    config.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy2(TOKENIZER_DIR / name, out / name)


def make_checkpoint(config: PretrainedConfig, out: Path, shard_gb: float, seed: int = 0) -> tuple[int, float]:
    """Write the whole checkpoint into out (created). Returns (bytes of weights, seconds)."""
    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    architecture, specs = plan(config)
    shards = assign_shards(specs, int(shard_gb * 1e9))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{architecture}: {len(specs)} tensors, {sum(s.nbytes for s in specs) / 2**30:.2f} GiB, "
          f"{len(shards)} shard(s), generating on {device}", flush=True)  # fmt: skip
    written = write_shards(shards, out, device, seed, config.num_hidden_layers)
    write_index(shards, out)
    write_config_and_tokenizer(config, architecture, out)
    return written, time.perf_counter() - start


def read_specs(folder: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor in a folder's safetensors files."""
    found: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():
                found[name] = tuple(handle.get_slice(name).get_shape())
    return found


def check_preset(preset: str, root: Path) -> list[str]:
    """Compare our tiny checkpoint with save_pretrained's and load it back; returns the problems found."""
    config = make_config(preset, tiny=True)
    reference = AutoModelForCausalLM.from_config(config).to(DTYPE)
    reference.save_pretrained(root / "reference")
    ours = root / "ours"
    make_checkpoint(config, ours, shard_gb=0.0001)  # several shards, so the index is exercised too
    expected, got = read_specs(root / "reference"), read_specs(ours)
    problems = [f"{preset}: missing {n} {s}" for n, s in expected.items() if n not in got]
    problems += [f"{preset}: unexpected {n} {s}" for n, s in got.items() if n not in expected]
    problems += [f"{preset}: {n} is {got[n]}, expected {s}" for n, s in expected.items() if n in got and got[n] != s]
    loaded: Any = AutoModelForCausalLM.from_pretrained(ours, output_loading_info=True)
    model, info = loaded
    problems += [f"{preset}: from_pretrained {kind}: {sorted(names)}" for kind, names in info.items() if names]
    problems += check_fusion(model, ours, config)
    return problems


def check_fusion(model: torch.nn.Module, folder: Path, config: PretrainedConfig) -> list[str]:
    """Expert 1 of the first MoE layer, as loaded, must hold exactly the tensors that were written."""
    layout = DISK_LAYOUTS[config.model_type]
    layer = next(i for i in range(config.num_hidden_layers) if _has(model, f"model.layers.{i}.mlp.experts"))
    experts: Any = model.get_submodule(f"model.layers.{layer}.mlp.experts")
    index = json.loads((folder / INDEX_NAME).read_text())["weight_map"]
    if layout is None:  # stored fused: each loaded tensor is the written one
        prefix = f"model.layers.{layer}.mlp.experts."
        names = [name for name, _ in experts.named_parameters()]
        pairs = [(name, getattr(experts, name)[1], _read(folder, index, prefix + name)[1]) for name in names]
    else:
        prefix = f"model.layers.{layer}.{layout.moe}.experts.1."
        gate, up, down = (_read(folder, index, prefix + f"{p}.weight") for p in (layout.gate, layout.up, layout.down))
        pairs = [
            ("gate_up_proj", experts.gate_up_proj[1], torch.cat([gate, up])),
            ("down_proj", experts.down_proj[1], down),
        ]
    return [
        f"{config.model_type}: loaded {name}[1] differs from what was written"
        for name, loaded, written in pairs
        if not torch.equal(loaded, written)
    ]


def _has(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _read(folder: Path, index: dict[str, str], name: str) -> torch.Tensor:
    with safe_open(str(folder / index[name]), "pt") as handle:
        return handle.get_tensor(name)


def self_check() -> int:
    problems: list[str] = []
    for preset in PRESETS:
        with tempfile.TemporaryDirectory() as tmp:
            problems += check_preset(preset, Path(tmp))
    for line in problems:
        print("FAIL", line)
    print("self-check:", "FAILED" if problems else f"OK ({', '.join(PRESETS)})")
    return 1 if problems else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen3-30b-a3b")
    parser.add_argument("--layers", type=int, help="override the number of decoder layers")
    parser.add_argument("--out", type=Path, help="output folder (created)")
    parser.add_argument("--shard-gb", type=float, default=4.0, help="shard size in GB (1e9 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--self-check", action="store_true", help="compare tiny checkpoints with save_pretrained's")
    args = parser.parse_args(argv)
    if not args.self_check and args.out is None:
        parser.error("--out is required (or --self-check)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_check:
        return self_check()
    config = make_config(args.preset, args.layers)
    written, seconds = make_checkpoint(config, args.out, args.shard_gb, args.seed)
    print(f"done: {written} bytes ({written / 2**30:.2f} GiB) of weights in {seconds:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
