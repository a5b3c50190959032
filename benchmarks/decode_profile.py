"""Where a served decode step of the packed Layer Drop 8/32 + W4A16 model spends its GPU time (CUDA only).

    python benchmarks/decode_profile.py > $OUT/decode_profile.txt

Builds packed_decode.py's model (Mixtral-8x7B shape, random packed weights on the GPU), decodes with
evaluation.served.ServedDecoder (static cache, compiled step in a CUDA graph) after a 128-token prompt, then
profiles --steps steps with torch.profiler: milliseconds a step (speed.decode_seconds, median of 3 after a
warm-up), and the kernels by GPU time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from packed_decode import DROPPED, build_packed_model  # noqa: E402
from served_decode import FULL  # noqa: E402

from moecomp.compression.evaluation.served import ServedDecoder  # noqa: E402
from moecomp.compression.evaluation.speed import decode_seconds, random_prompt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    model = build_packed_model(dict(FULL), DROPPED, "cuda")
    prompt = random_prompt(model, args.batch, 128, torch.device("cuda"))
    with torch.no_grad():
        decoder = ServedDecoder(model, 128 + args.steps, compile=True)
        step_ms = decode_seconds(decoder, prompt, args.steps, warmup=1, repeats=3) * 1000 / args.steps
        token = decoder.prefill(prompt)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                token = decoder.step(token)
            torch.cuda.synchronize()
    print(f"== packed 32 layers (8 MoE dropped) batch {args.batch}: {step_ms:.3f} ms/step ({1000 / step_ms:.1f} tok/s)")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    main()
