"""Benchmark of the slimming pass: GPTQ W4A16 and AWQ W4A16 through moecomp and through plain llm-compressor.

A Mixtral-8x7B-shaped model (hidden 4096, experts 8 x 14336, top-2, bf16) with random weights and only
``--layers`` decoder layers (default 4: ~12 GB on disk) is written once to a temporary folder with the
tiny-mixtral tokenizer (vocabulary 8192). Then, in the same process and on the same calibration batch
(``--samples`` x ``--seq-len`` random token ids, default 128 x 2048):

- moecomp: ``run_slimming(model_dir, [GPTQConfig()], ...)`` and ``[AWQConfig()]`` (load, linearize,
  calibrate layer by layer, save packed, reload check); the stage time and the whole pass are timed;
- plain llm-compressor: ``oneshot(model, dataset, recipe=GPTQModifier(scheme="W4A16", ...))`` and
  AWQModifier + QuantizationModifier(W4A16_ASYM), on a model loaded with ``from_pretrained``; the
  ``oneshot`` call is timed (save excluded).

Prints wall times and peak device memory (torch.cuda.max_memory_allocated) and writes JSON to --out.

    .venv/bin/python benchmarks/slim.py --small --out /tmp/slim_small.json             # CPU, minutes
    python benchmarks/slim.py --out benchmarks/results/slim_h200.json                  # CUDA, full size

To compare the two paths under the same conditions within one 10-minute device command, run them side by side
on two GPUs of one host (and again with the GPUs swapped); AWQ costs ~150 s per layer at 128 x 2048, so use
``--layers 2`` for it (benchmarks/results/slim_awq_h200.md):

    CUDA_VISIBLE_DEVICES=0 python benchmarks/slim.py --methods awq --layers 2 --skip-plain --out moecomp.json &
    CUDA_VISIBLE_DEVICES=1 python benchmarks/slim.py --methods awq --layers 2 --skip-moecomp --out plain.json &

Reference: plain oneshot GPTQ W4A16 g128 on 4 layers of this shape took 127 s at 35.2 GiB on an H200.
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
from transformers import AutoModelForCausalLM, AutoTokenizer, MixtralConfig

from moecomp.assets import DEMO_MODEL
from moecomp.compression.context import RunContext
from moecomp.compression.methods.quantization import AWQConfig, GPTQConfig
from moecomp.compression.slimming.llmcompressor_pass import run_slimming
from moecomp.compression.slimming.llmcompressor_seam import cpu_safe_pinning

FULL = dict(
    hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
    num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768, rms_norm_eps=1e-5,
)  # fmt: skip
SMALL = dict(
    hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
    num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=512,
)  # fmt: skip


@torch.no_grad()
def write_random_model(folder: Path, layers: int, small: bool, device: str) -> Path:
    """A random bf16 Mixtral of the chosen shape, saved like a hub checkpoint (weights generated on ``device``)."""
    config = MixtralConfig(**(SMALL if small else FULL), num_hidden_layers=layers, vocab_size=8192)
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    generator = torch.Generator(device=device).manual_seed(0)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            values = torch.randn(param.shape, generator=generator, device=device, dtype=torch.float32)
            param.copy_((values * 0.02).to(torch.bfloat16).cpu())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(DEMO_MODEL).save_pretrained(folder)
    return folder


def _reset_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def run_moecomp(name: str, stage: Any, model_dir: Path, calib: torch.Tensor, out: Path, device: str) -> dict:
    peaks: dict[str, float | None] = {}

    def sink(kind: str, stage_name: str, data: dict) -> None:
        if kind == "progress" and stage_name == "export" and data["step"] == 0:
            peaks["calibration"] = _peak_gib()  # before the reload check adds a second copy

    _reset_memory()
    start = time.perf_counter()
    report = run_slimming(model_dir, [stage], calib, out, device=device, ctx=RunContext(sink=sink))[0]
    return {
        "run": f"moecomp {name}",
        "pass_s": round(time.perf_counter() - start, 1),
        "stage_s": report["seconds"],
        "peak_gib": peaks.get("calibration"),
        "peak_gib_with_reload_check": _peak_gib(),
        "weights_ratio": report["checkpoint"]["weights_ratio"],
        "fallbacks": len(report["results"]["fallbacks"]),
    }


def _plain_recipe(name: str) -> list:
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    ignore = ["lm_head", "re:.*mlp.gate$"]
    if name == "gptq":
        return [GPTQModifier(targets="Linear", scheme="W4A16", ignore=ignore)]
    return [AWQModifier(), QuantizationModifier(targets="Linear", scheme="W4A16_ASYM", ignore=ignore)]


def run_plain(name: str, model_dir: Path, calib: torch.Tensor) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot

    _reset_memory()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    rows = calib.tolist()
    dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    start = time.perf_counter()
    with cpu_safe_pinning():  # a no-op with CUDA; on CPU plain AWQ fails in pin_memory without it
        oneshot(
            model=model,
            processor=AutoTokenizer.from_pretrained(model_dir),
            dataset=dataset,
            recipe=_plain_recipe(name),
            num_calibration_samples=len(rows),
            max_seq_length=calib.shape[1],
            shuffle_calibration_samples=False,
        )
    seconds = round(time.perf_counter() - start, 1)
    del model
    return {"run": f"plain oneshot {name}", "pass_s": seconds, "stage_s": seconds, "peak_gib": _peak_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny shape on CPU")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 4, --small 2)")
    parser.add_argument("--samples", type=int, default=None, help="calibration sequences (default 128, --small 4)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 2048, --small 64)")
    parser.add_argument("--methods", default="gptq,awq")
    parser.add_argument("--skip-plain", action="store_true", help="only the moecomp runs")
    parser.add_argument("--skip-moecomp", action="store_true", help="only the plain llm-compressor runs")
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cpu" if args.small or not torch.cuda.is_available() else "cuda"
    layers = args.layers or (2 if args.small else 4)
    samples, seq_len = args.samples or (4 if args.small else 128), args.seq_len or (64 if args.small else 2048)
    calib = torch.randint(0, 8192, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    work = Path(tempfile.mkdtemp(prefix="slim-bench-", dir=args.tmp_dir))
    rows: list[dict] = []
    try:
        start = time.perf_counter()
        model_dir = write_random_model(work / "model", layers, args.small, device)
        print(f"wrote {layers}-layer model in {time.perf_counter() - start:.1f} s to {model_dir}", flush=True)
        stages = {"gptq": GPTQConfig(), "awq": AWQConfig()}
        for name in args.methods.split(","):
            if not args.skip_moecomp:
                rows.append(run_moecomp(name, stages[name], model_dir, calib, work / f"out-{name}", device))
                print(rows[-1], flush=True)
                shutil.rmtree(work / f"out-{name}", ignore_errors=True)
            if not args.skip_plain:
                rows.append(run_plain(name, model_dir, calib))
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    result = {"device": device, "gpu": gpu, "host": platform.node(), "layers": layers,
              "calibration": [samples, seq_len], "torch": torch.__version__, "rows": rows}  # fmt: skip
    print(f"\n{'run':<24} {'pass s':>8} {'stage s':>8} {'peak GiB':>9}")
    for row in rows:
        print(f"{row['run']:<24} {row['pass_s']:>8} {row['stage_s']:>8} {row['peak_gib'] or '-':>9}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
