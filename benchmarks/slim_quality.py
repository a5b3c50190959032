"""Held-out perplexity of every slimming method on the trained fixtures (reloaded checkpoints, plain transformers).

Calibration: ``--samples`` x ``--seq-len`` tokens packed from the bundled texts (held-out documents removed),
blocks shuffled with seed 0. Evaluation: the first 16 x 256 tokens of heldout.txt, each checkpoint reloaded
from disk in its own dtype (bf16). Methods: rtn, gptq, awq (4 bit, group 128 or the largest divisor),
magnitude, wanda, sparsegpt (50% and 2:4, routed experts).

    .venv/bin/python benchmarks/slim_quality.py --out benchmarks/results/slim_quality.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moecomp.compression.context import RunContext  # noqa: E402
from moecomp.compression.recipe import Recipe  # noqa: E402
from moecomp.compression.slimming.llmcompressor_pass import run_slimming  # noqa: E402
from tests.compression.slimming_fixtures import calibration_ids, heldout_ids, perplexity  # noqa: E402

FIXTURES = {
    "tiny-mixtral": ROOT / "moecomp/assets/models/tiny-mixtral",
    "tiny-qwen2-moe": ROOT / "tests/fixtures/models/tiny-qwen2-moe",
}
STAGES = {
    "rtn w4": {"method": "rtn"},
    "gptq w4": {"method": "gptq"},
    "awq w4": {"method": "awq"},
    "magnitude 50%": {"method": "magnitude"},
    "wanda 50%": {"method": "wanda"},
    "sparsegpt 50%": {"method": "sparsegpt"},
    "magnitude 2:4": {"method": "magnitude", "pattern": "2:4"},
    "wanda 2:4": {"method": "wanda", "pattern": "2:4"},
    "sparsegpt 2:4": {"method": "sparsegpt", "pattern": "2:4"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--fixtures", default=",".join(FIXTURES))
    parser.add_argument("--methods", default=",".join(STAGES))
    parser.add_argument("--device", default="cpu", help="where the pass runs (AWQ needs cuda); perplexity is on CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows: dict[str, dict[str, float]] = {}
    for fixture in args.fixtures.split(","):
        model_dir = FIXTURES[fixture]
        calib = calibration_ids(model_dir, args.samples, args.seq_len)
        held = heldout_ids(model_dir)
        rows.setdefault("bf16 (original)", {})[fixture] = perplexity(model_dir, held)
        for name in args.methods.split(","):
            stage = Recipe.model_validate({"stages": [STAGES[name]]}).stages
            work = Path(tempfile.mkdtemp(prefix="slim-quality-"))
            try:
                start = time.perf_counter()
                report = run_slimming(model_dir, stage, calib, work / "out", device=args.device, ctx=RunContext())[0]
                ppl = perplexity(work / "out", held)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            rows.setdefault(name, {})[fixture] = ppl
            ratio = report["checkpoint"]["weights_ratio"]
            print(
                f"{fixture:16} {name:16} ppl {ppl:7.2f}  {time.perf_counter() - start:6.1f} s  size x{ratio}",
                flush=True,
            )
    fixtures = args.fixtures.split(",")
    print("\n| method | " + " | ".join(fixtures) + " |\n|---|" + "---|" * len(fixtures))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values.get(f, float('nan')):.2f}" for f in fixtures) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"calibration": [args.samples, args.seq_len], "device": args.device, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
