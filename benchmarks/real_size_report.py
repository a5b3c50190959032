"""The recipe and the summary of one real-size run (benchmarks/real_size.sh, benchmarks/families_real_size.sh).

``recipe``: a streamed trimming stage, then GPTQ, for a preset of make_random_checkpoint.py: ``expert_drop``
layerwise keeping ``1 - drop`` of the experts (layerwise: slimming after a global drop that left layers uneven is
refused), then ``gptq`` w4 g128. A stage the preset's family refuses up front (``MoEFamily.check_methods``) is left
out and named in a ``# refused:`` line of the recipe, so that the run measures what the family does support.

``summary``: from the results folder's rss.json (benchmarks/peak_rss.py), moecomp.json (the manifest: wall time and
peak GPU memory per pass) and compress.log (the CLI's progress bars, one per layer loop), plus the sizes of the
checkpoint and the output, writes summary.json and prints it as a table. Layer loops are timed from their bars
(tqdm's elapsed, 1 s resolution, counted from the first layer's end, so a dense or warm-up first layer is left
out): per layer = elapsed at the last layer / (layers - 1). The full-size estimate adds, to the run's total, that
per-layer time for each missing layer of every layer loop, and scales the slimming pass's reload check ("export"
in one step) with the layer count; the skeleton, embedding and calibration data count once.

    python benchmarks/real_size_report.py recipe --preset glm-4.5-air --out recipe.yaml
    python benchmarks/real_size_report.py summary --results R --preset glm-4.5-air --layers 6 \\
        --checkpoint /dev/shm/w/model --output /dev/shm/w/out --generation-seconds 31.5
    python benchmarks/real_size_report.py reload --model /tmp/w/out      # a CPU-sized output loads and runs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from make_random_checkpoint import make_config  # run as a script: benchmarks/ is on sys.path

from moecomp.compression.adapters import RefusedMethod, get_adapter
from moecomp.compression.recipe import Recipe

REFUSED = "# refused: "  # the recipe's comment line naming a stage left out, and why
# One tqdm update: "gptq:  50%|█████     | 2/4 [00:01<00:00,  2.46step/s]" (elapsed [H:]MM:SS)
BAR = re.compile(r"^(?P<stage>[\w+() /.-]+?): +\d+%\|[^|]*\| (?P<n>\d+)/(?P<total>\d+) \[(?P<elapsed>[\d:]+)<")


def build_recipe(preset: str, drop: float, bits: int, group_size: int) -> tuple[dict[str, Any], list[str]]:
    """The recipe as data and the reasons of the stages left out."""
    config = make_config(preset)
    family = get_adapter(config)
    experts = family.num_experts(config)
    keep = max(family.top_k(config), experts - round(experts * drop))
    stages = [
        {"method": "expert_drop", "mode": "layerwise", "keep": keep},
        {"method": "gptq", "bits": bits, "group_size": group_size},
    ]
    kept, refused = [], []
    for stage in stages:
        try:
            family.check_methods(Recipe.model_validate({"version": 1, "stages": [stage]}).stages)
            kept.append(stage)
        except RefusedMethod as exc:
            refused.append(str(exc))
    return {"version": 1, "stages": kept, "calibration": {"samples": 128, "seq_len": 2048}}, refused


def write_recipe(args: argparse.Namespace) -> int:
    recipe, refused = build_recipe(args.preset, args.drop, args.bits, args.group_size)
    Recipe.model_validate(recipe)
    lines = [f"# {args.preset}: {len(recipe['stages'])} stage(s); written by benchmarks/real_size_report.py"]
    lines += [REFUSED + reason for reason in refused]
    args.out.write_text("\n".join(lines) + "\n" + yaml.safe_dump(recipe, sort_keys=False))
    print(args.out.read_text(), end="")
    return 0


def seconds(elapsed: str) -> int:
    total = 0
    for part in elapsed.split(":"):
        total = total * 60 + int(part)
    return total


def layer_loops(log: str) -> dict[str, dict[str, Any]]:
    """Per progress bar (stage name): steps, elapsed at the first update that reached the last step, per step."""
    first: dict[str, dict[int, int]] = {}  # stage -> step -> elapsed at its first update
    totals: dict[str, int] = {}
    for line in re.split(r"[\r\n]", log):
        match = BAR.match(line.strip())
        if match:
            stage, n = match["stage"], int(match["n"])
            totals[stage] = int(match["total"])
            first.setdefault(stage, {}).setdefault(n, seconds(match["elapsed"]))
    loops = {}
    for stage, total in totals.items():
        done = first[stage].get(total)
        if done is None:
            continue  # never finished (the run failed there)
        per_step = done / (total - 1) if total > 1 else None
        loops[stage] = {"steps": total, "elapsed_s": done, "per_step_s": per_step}
    return loops


def plan_lines(log: str) -> list[str]:
    """The CLI's memory plan and each pass's calibration placement (activations on the device or the host, one
    layer's weights at a time: the streamed path), once each."""
    found = [line.strip() for line in re.split(r"[\r\n]", log) if re.match(r"\[[\w+]+\] (plan|calibration): ", line)]
    return list(dict.fromkeys(found))


def folder_bytes(folder: Path) -> int | None:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else None


def estimate_full(total: float, loops: dict[str, dict[str, Any]], layers: int, full: int) -> float:
    """The run's total with every layer loop (and the reload check) at the full layer count."""
    extra = 0.0
    for stage, loop in loops.items():
        if loop["steps"] == layers and loop["per_step_s"] is not None:
            extra += loop["per_step_s"] * (full - layers)
        elif stage == "export" and loop["steps"] == 1:  # the slimming pass's reload check reads every layer
            extra += loop["elapsed_s"] * (full / layers - 1)
    return total + extra


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    rss = json.loads((args.results / "rss.json").read_text())
    manifest_path = args.results / "moecomp.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    timings = manifest.get("timings", {})
    log = (args.results / "compress.log").read_text(errors="replace")
    loops = layer_loops(log)
    recipe_path = args.results / "recipe.yaml"
    refused = [line.removeprefix(REFUSED) for line in recipe_path.read_text().splitlines() if line.startswith(REFUSED)]
    full = make_config(args.preset).num_hidden_layers
    summary: dict[str, Any] = {
        "preset": args.preset, "layers": args.layers, "full_layers": full, "returncode": rss["returncode"],
        "checkpoint_bytes": folder_bytes(args.checkpoint), "output_bytes": folder_bytes(args.output),
        "generation_s": args.generation_seconds, "wall_s": rss["seconds"],
        "peak_rss_gib": rss["peak_rss_gib"], "peak_rss_anon_gib": rss["peak_rss_anon_gib"],
        "peak_gpu_used_gib": rss["peak_gpu_used_gib"], "timings": timings, "layer_loops": loops,
        "stages": [s["method"] for s in manifest.get("recipe", {}).get("stages", [])], "refused": refused,
        "plan": plan_lines(log),
    }  # fmt: skip
    if "total" in timings:
        summary["estimated_full_total_s"] = round(estimate_full(timings["total"], loops, args.layers, full), 1)
        summary["estimated_full_generation_s"] = round(args.generation_seconds * full / args.layers, 1)
    return summary


def describe(summary: dict[str, Any]) -> str:
    def size(n: int | None) -> str:
        return "-" if n is None else f"{n / 1e9:.2f} GB"

    lines = [
        f"{summary['preset']}: {summary['layers']} of {summary['full_layers']} layers, stages {summary['stages']}, "
        f"return code {summary['returncode']}",
        f"  checkpoint {size(summary['checkpoint_bytes'])} (generated in {summary['generation_s']:.1f} s), "
        f"output {size(summary['output_bytes'])}",
        f"  wall {summary['wall_s']:.1f} s; peak host RSS {summary['peak_rss_gib']:.2f} GiB "
        f"(anonymous {summary['peak_rss_anon_gib']:.2f}); peak GPU in use {summary['peak_gpu_used_gib']} GiB",
    ]
    for p in summary["timings"].get("passes", []):
        lines.append(f"  pass {p['family']} {p['methods']}: {p['seconds']:.1f} s, peak GPU {p.get('peak_gpu_gib')} GiB")
    for stage, loop in summary["layer_loops"].items():
        per = "" if loop["per_step_s"] is None else f", {loop['per_step_s']:.2f} s per step after the first"
        lines.append(f"  loop {stage}: {loop['steps']} steps in {loop['elapsed_s']} s{per}")
    if "estimated_full_total_s" in summary:
        lines.append(
            f"  estimated at {summary['full_layers']} layers: compress {summary['estimated_full_total_s']:.0f} s, "
            f"generation {summary['estimated_full_generation_s']:.0f} s"
        )
    lines += [f"  refused: {reason}" for reason in summary["refused"]]
    lines += [f"  {line}" for line in summary["plan"]]
    return "\n".join(lines)


def write_summary(args: argparse.Namespace) -> int:
    summary = summarize(args)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(describe(summary))
    return 0


def reload(args: argparse.Namespace) -> int:
    """Load the output with stock transformers (its own code where the manifest says so) and run a forward."""
    import torch
    from transformers import AutoModelForCausalLM

    manifest = json.loads((args.model / "moecomp.json").read_text())
    trust = manifest["output"]["loading"] == "remote_code"
    loaded: Any = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=trust, output_loading_info=True)
    model, info = loaded
    problems = [f"{kind}: {sorted(names)}" for kind, names in info.items() if names]
    with torch.no_grad():
        logits = model(torch.arange(1, 33)[None]).logits
    if not torch.isfinite(logits).all():
        problems.append("non-finite logits")
    print(
        f"reload {args.model}: {type(model).__name__}, logits {tuple(logits.shape)}, " + ("; ".join(problems) or "OK")
    )
    return 1 if problems else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    recipe = commands.add_parser("recipe", help="write the preset's recipe")
    recipe.add_argument("--preset", required=True)
    recipe.add_argument("--drop", type=float, default=0.25, help="fraction of each MoE layer's experts dropped")
    recipe.add_argument("--bits", type=int, default=4)
    recipe.add_argument("--group-size", type=int, default=128)
    recipe.add_argument("--out", type=Path, required=True)
    recipe.set_defaults(func=write_recipe)
    summary = commands.add_parser("summary", help="write RESULTS/summary.json and print it")
    summary.add_argument("--results", type=Path, required=True)
    summary.add_argument("--preset", required=True)
    summary.add_argument("--layers", type=int, required=True)
    summary.add_argument("--checkpoint", type=Path, required=True)
    summary.add_argument("--output", type=Path, required=True)
    summary.add_argument("--generation-seconds", type=float, required=True)
    summary.set_defaults(func=write_summary)
    check = commands.add_parser("reload", help="load a compressed checkpoint with transformers and run a forward")
    check.add_argument("--model", type=Path, required=True)
    check.set_defaults(func=reload)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
