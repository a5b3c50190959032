"""``moecomp``: one argparse program whose subcommands live in small modules.

The library commands (compress, evaluate) import torch; they are registered only when named on the
command line, so that ``moecomp status`` and ``moecomp --help`` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import httpx

from moecomp import __version__
from moecomp.cli import admin, client, serve, worker

# name -> (module with add_parser(subparsers), one-line help shown before the module is imported)
LIBRARY_COMMANDS = {
    "compress": ("moecomp.cli.compress", "compress a model with a recipe, locally (no service)"),
    "evaluate": ("moecomp.cli.evaluate", "evaluate a checkpoint against its original, locally (no service)"),
}


def _add_library_command(subparsers: argparse._SubParsersAction, name: str, load: bool) -> None:
    module_name, help_text = LIBRARY_COMMANDS[name]
    if load:
        try:
            importlib.import_module(module_name).add_parser(subparsers)
            return
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    stub = subparsers.add_parser(name, help=help_text, add_help=False)
    stub.add_argument("rest", nargs=argparse.REMAINDER)
    stub.set_defaults(func=lambda _args: _unavailable(name))


def _unavailable(name: str) -> int:
    print(f"moecomp {name}: this installation does not include the command", file=sys.stderr)
    return 2


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moecomp", description="Compress Mixture-of-Experts language models.")
    parser.add_argument("--version", action="version", version=f"moecomp {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(subparsers)
    worker.add_parser(subparsers)
    admin.add_parser(subparsers)
    client.add_parsers(subparsers)
    named = next((a for a in argv if not a.startswith("-")), None)
    for name in LIBRARY_COMMANDS:
        _add_library_command(subparsers, name, load=name == named)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except client.ClientError as exc:
        print(f"moecomp: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        url = os.environ.get("MOECOMP_URL", client.DEFAULT_URL)
        print(f"moecomp: cannot reach the service at {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
