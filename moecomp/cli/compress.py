"""``moecomp compress``: run a recipe on a model locally (no service) with a progress bar.

    moecomp compress --model PATH|HUB_ID [--revision R] --recipe FILE [--calibration FILE[,FILE...]]
                     [--samples N] [--seq-len L] [--device cpu|cuda] [--dtype auto|bfloat16|float16|float32]
                     --out DIR

Only parses flags, draws progress and prints the outcome; the work is :func:`pipeline.compress`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moecomp.compression.context import EventKind, RunContext
from moecomp.compression.recipe import Recipe, load_recipe


class ProgressBar:
    """A RunContext sink: one tqdm bar per stage, messages printed above it."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: Any = None
        self.stage: str | None = None

    def __call__(self, kind: EventKind, stage: str, data: dict[str, Any]) -> None:
        from tqdm import tqdm

        if kind == "message":
            tqdm.write(f"[{stage}] {data.get('text', '')}", file=self.stream)
        elif kind == "progress":
            if stage != self.stage or self.bar is None:
                self.close()
                self.bar = tqdm(total=data["total"], desc=stage, unit="step", file=self.stream, leave=True)
                self.stage = stage
            self.bar.total = data["total"]
            self.bar.n = data["step"]
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.stage = None, None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``compress`` on the ``moecomp`` command line."""
    parser = subparsers.add_parser("compress", help="compress a model with a recipe, locally (no service)")
    parser.add_argument("--model", required=True, help="a local checkpoint folder or a hub id (org/name)")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--recipe", required=True, type=Path, help="recipe file, JSON or YAML")
    parser.add_argument("--calibration", help="comma-separated calibration sources; replaces the recipe's")
    parser.add_argument("--samples", type=int, help="calibration sequences; replaces the recipe's")
    parser.add_argument("--seq-len", type=int, help="tokens per calibration sequence; replaces the recipe's")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty)")
    parser.set_defaults(func=run)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe file with the calibration flags applied (validated again as a whole)."""
    recipe = load_recipe(args.recipe)
    calibration = recipe.calibration.model_dump()
    if args.calibration:
        calibration["sources"] = [s.strip() for s in args.calibration.split(",") if s.strip()]
    if args.samples is not None:
        calibration["samples"] = args.samples
    if args.seq_len is not None:
        calibration["seq_len"] = args.seq_len
    return Recipe.model_validate({**recipe.model_dump(), "calibration": calibration})


def describe(manifest: dict[str, Any], out: Path) -> str:
    """What was removed (original numbering) and how to load the result."""
    decisions, output = manifest.get("decisions", {}), manifest["output"]
    lines = []
    for layer, kept in decisions.get("kept_experts", {}).items():
        lines.append(f"  layer {layer}: kept experts {kept}")
    if decisions.get("dropped_layers"):
        lines.append(f"  MoE sub-layers dropped: {decisions['dropped_layers']}")
    if decisions.get("dropped_blocks"):
        lines.append(f"  blocks dropped: {decisions['dropped_blocks']}")
    trust = ", trust_remote_code=True" if output["loading"] == "remote_code" else ""
    lines.append(f"checkpoint: {out} ({output['loading']}; {output.get('num_hidden_layers')} layers)")
    lines.append(f"load it with AutoModelForCausalLM.from_pretrained({str(out)!r}{trust})")
    return "\n".join(["decisions (original numbering):" if len(lines) > 2 else "nothing removed", *lines])


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from moecomp.compression.activations import HostMemoryError
    from moecomp.compression.pipeline import compress
    from moecomp.compression.planning import DiskSpaceError

    try:
        recipe = recipe_from_args(args)
    except (ValidationError, OSError, ValueError) as exc:
        print(f"moecomp compress: invalid recipe {args.recipe}: {exc}", file=sys.stderr)
        return 2
    bar = ProgressBar()
    try:
        manifest = compress(
            args.model, recipe, args.out, revision=args.revision, device=args.device, dtype=args.dtype,
            ctx=RunContext(sink=bar),
        )  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError, DiskSpaceError, HostMemoryError) as exc:
        bar.close()
        print(f"moecomp compress: {exc}", file=sys.stderr)
        return 1
    bar.close()
    print(describe(manifest, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moecomp")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compress", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
