"""The `ina` command: maps subcommands to functions, nothing more.

Each room of the package exposes ``register(subparsers)`` in its own ``cli`` module; heavy imports
happen inside the handlers so that ``ina --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Rooms whose `cli.register(subparsers)` adds subcommands, in the order `ina --help` lists them.
ROOMS: tuple[str, ...] = (
    "ina.core.cli",
    "ina.experiments.cli",
    "ina.viz.cli",
    "ina.finetune.cli",
    "ina.serve.cli",
    "ina.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full `ina` parser with every room's subcommands."""
    from ina import __version__

    parser = argparse.ArgumentParser(
        prog="ina",
        description="InA (Inhibition Adaptation): fine-tune, evaluate, serve and inspect InA adapters.",
    )
    parser.add_argument("--version", action="version", version=f"ina {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for room in ROOMS:
        importlib.import_module(room).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ina` console script; returns the process exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if unknown and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    handler = args.handler
    result = handler(args, unknown) if getattr(args, "accepts_extra_args", False) else handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
