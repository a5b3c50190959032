"""Held-out perplexity before/after each trimming recipe of the study, on the trained tiny fixtures.

Every figure is measured on the checkpoint reloaded from disk (remote code where it carries some),
never on the model in memory. Calibration: the bundled texts (held-out documents excluded),
packed as the study does; perplexity: moecomp/assets/text/heldout.txt in 256-token windows.

    .venv/bin/python benchmarks/trim_quality.py [--samples 64] [--seq-len 256] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

# Remote code of the reloaded checkpoints is copied here, not into ~/.cache (read when transformers is imported).
MODULES = os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="trim-quality-modules-"))

import torch  # noqa: E402

from moecomp.assets import DEMO_MODEL  # noqa: E402
from moecomp.compression.evaluation.loading import load_checkpoint  # noqa: E402
from moecomp.compression.evaluation.perplexity import perplexity  # noqa: E402
from moecomp.compression.evaluation.texts import source_windows  # noqa: E402
from moecomp.compression.pipeline import compress  # noqa: E402
from moecomp.compression.recipe import Recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = {"tiny-mixtral": DEMO_MODEL, "tiny-qwen2-moe": ROOT / "tests/fixtures/models/tiny-qwen2-moe"}
RECIPES = {
    "expert_drop layerwise keep 6": [{"method": "expert_drop", "keep": 6}],
    "expert_drop global keep 6": [{"method": "expert_drop", "mode": "global", "keep": 6}],
    "layer_drop 2": [{"method": "layer_drop", "drop": 2}],
    "block_drop 2": [{"method": "block_drop", "drop": 2}],
    "layer_drop 2 + expert_drop keep 6": [{"method": "layer_drop", "drop": 2}, {"method": "expert_drop", "keep": 6}],
}
WINDOW = 256


def heldout_ppl(checkpoint: Path, device: str) -> float:
    loaded = load_checkpoint(checkpoint, device=device, dtype="float32")
    wins = source_windows("bundled:heldout", loaded.tokenizer, WINDOW, max_tokens=10**9)
    return float(perplexity(loaded.model, wins)["ppl"])


def run_fixture(name: str, source: Path, args: argparse.Namespace, scratch: Path) -> list[dict]:
    rows = [{"fixture": name, "recipe": "original", "loading": "stock", "ppl": heldout_ppl(source, args.device)}]
    calibration = {"samples": args.samples, "seq_len": args.seq_len}
    for label, stages in RECIPES.items():
        out = scratch / f"{name}-{len(rows)}"
        start = time.perf_counter()
        recipe = Recipe.model_validate({"stages": stages, "calibration": calibration})
        manifest = compress(source, recipe, out, device=args.device)
        seconds = time.perf_counter() - start
        rows.append(
            {"fixture": name, "recipe": label, "loading": manifest["output"]["loading"],
             "ppl": heldout_ppl(out, args.device), "compress_s": round(seconds, 1),
             "decisions": manifest["decisions"]}
        )  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| fixture | recipe | loads as | held-out ppl | vs original | compress s |", "|---|---|---|---|---|---|"]
    base = {r["fixture"]: r["ppl"] for r in rows if r["recipe"] == "original"}
    for r in rows:
        delta = f"{100 * (r['ppl'] / base[r['fixture']] - 1):+.1f}%" if r["recipe"] != "original" else ""
        lines.append(
            f"| {r['fixture']} | {r['recipe']} | {r['loading']} | {r['ppl']:.2f} | {delta} "
            f"| {r.get('compress_s', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fixtures", default=",".join(FIXTURES), help="comma-separated: " + ", ".join(FIXTURES))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="trim-quality-") as scratch:
            for name in args.fixtures.split(","):
                rows += run_fixture(name, FIXTURES[name], args, Path(scratch))
    finally:
        if Path(MODULES).name.startswith("trim-quality-modules-"):
            shutil.rmtree(MODULES, ignore_errors=True)
    print(f"calibration {args.samples} x {args.seq_len} tokens (bundled texts); held-out windows of {WINDOW}")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
