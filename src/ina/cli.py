"""The `ina` command: maps subcommands to functions, nothing more.

Parsing imports no framework: the command table below names each command's room, and only the room
of the command being run is imported (its ``cli.register(subparsers)`` adds its parser; its handlers
import the room's library code when they run). ``ina --help`` needs no room at all.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ina.foundation.errors import Parser, UsageError, one_line

# Command -> (module whose `register(subparsers)` adds it, one-line help), in the order `ina --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": (
        "ina.cli",
        "rewrite an adapter (the authors' LORA+lora_inhibition format, or plain LoRA) as an InA adapter",
    ),
    "info": ("ina.cli", "print how ina reads an adapter folder (format, ρ, rank, targets)"),
    "glue": (
        "ina.experiments.cli",
        "fine-tune an InA adapter on a GLUE task (offline default: MiniLM on vader movie reviews)",
    ),
    "squad": (
        "ina.experiments.cli",
        "fine-tune an InA adapter for extractive QA on SQuAD v1/v2 JSON (offline default: a synthetic set)",
    ),
    "sweep": (
        "ina.experiments.cli",
        "run glue or squad over inhibition ratios × seeds; writes results.csv/.md/.png (resumable)",
    ),
    "viz": ("ina.viz.cli", "pictures of InA: attention maps, what the gate inhibits, loss curves"),
    "finetune": (
        "ina.finetune.cli",
        "instruction-tune a causal LM with an InA adapter (no arguments: the embedded SmolLM2 demo)",
    ),
    "generate": (
        "ina.finetune.cli",
        "generate with a base model and InA adapters, using the prompt template the adapter was trained with",
    ),
    "eval": (
        "ina.evaluate.cli",
        "lm-evaluation-harness on a base causal LM and its InA/LoRA adapters: a table base vs adapters",
    ),
    "serve": (
        "ina.serve.cli",
        "serve a base model and InA adapters: OpenAI-compatible API (/v1/...) and a web UI (/)",
    ),
    "bench": (
        "ina.bench.cli",
        "time training steps (and decoding) of the frozen base, PEFT LoRA and InA (reference and fast path)",
    ),
    "export": (
        "ina.export.cli",
        "export an InA adapter as the LoRA that best reproduces it (vLLM, SGLang, llama.cpp), with its fidelity",
    ),
}


class _Commands:
    """The subparsers action handed to a room's ``register``: each command's one-line help comes from `COMMANDS`."""

    def __init__(self, action: argparse._SubParsersAction) -> None:
        self._action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("help", COMMANDS[name][1])
        return self._action.add_parser(name, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `ina` parser: every command listed; the parser of ``command`` (its room's commands) built in full."""
    from ina import __version__

    parser = Parser(
        prog="ina",
        description="InA (Inhibition Adaptation): fine-tune, evaluate, serve and inspect InA adapters.",
    )
    parser.add_argument("--version", action="version", version=f"ina {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    room = COMMANDS[command][0] if command in COMMANDS else None
    if room is not None:
        module = sys.modules[__name__] if room == __name__ else importlib.import_module(room)
        module.register(_Commands(subparsers))
    for name, (owner, help_text) in COMMANDS.items():
        if owner != room:
            subparsers.add_parser(name, help=help_text)
    # argparse lists commands in the order they were added; keep the table's order.
    order = list(COMMANDS)
    subparsers._choices_actions.sort(key=lambda action: order.index(action.dest))
    return parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """`ina convert` and `ina info`: adapter files on the command line."""
    _register_adapter_files(subparsers)


def _register_adapter_files(subparsers: argparse._SubParsersAction) -> None:
    """`ina convert` and `ina info`: adapter files on the command line."""
    convert = subparsers.add_parser("convert")
    convert.add_argument(
        "src", metavar="SRC", help="folder with adapter_config.json and adapter_model.safetensors"
    )
    convert.add_argument("dst", metavar="DST", help="new folder to write (must not exist)")
    convert.set_defaults(handler=_convert)

    info = subparsers.add_parser(
        "info",
        description="Check an adapter folder (config, weights readable and finite, markers, recorded checksums) "
        "and print, as JSON, its format (ina, authors or lora) and how ina reads it. A damaged folder is "
        "one error line and exit code 2.",
    )
    info.add_argument("path", metavar="PATH", help="an adapter folder")
    info.set_defaults(handler=_info)


def _adapter_folder(value: str, name: str) -> Path:
    """``value`` as an adapter folder, or a `UsageError` naming the parameter ``name`` (as `--adapter` errors do)."""
    from ina.foundation.adapters import adapter_folder_problem

    if problem := adapter_folder_problem(value):
        raise UsageError(f"{name} {value!r}: {problem}")
    return Path(value)


def _checked(path: Path, name: str) -> Any:
    """The `InAConfig` of the adapter in ``path`` after `check_adapter_folder`; its errors name ``name``."""
    from ina.core.loading import AdapterFileError, check_adapter_folder

    try:
        return check_adapter_folder(path)
    except AdapterFileError as error:
        raise UsageError(f"{name} {error}") from error


def _convert(args: argparse.Namespace) -> int:
    from ina.core.loading import convert_adapter

    src = _adapter_folder(args.src, "SRC")
    dst = Path(args.dst)
    from ina.foundation.files import output_problem, overlap_problem

    if problem := overlap_problem(dst, "DST", {"SRC": src}):
        raise UsageError(problem)
    if dst.exists() or dst.is_symlink():
        raise UsageError(f"DST {args.dst!r} exists; give a new folder (convert never overwrites)")
    if problem := output_problem(dst, "DST", folder=True):
        raise UsageError(problem)
    _checked(src, "SRC")  # a damaged adapter is refused, never copied
    config = convert_adapter(src, dst)
    print(f"wrote {args.dst}: InA adapter, inhibition={config.inhibition}, activation={config.activation}")
    return 0


def adapter_format(path: str | Path) -> str:
    """``ina`` (peft_type INA), ``authors`` (LORA + lora_inhibition) or ``lora`` (plain LoRA, read as ρ = 0)."""
    data = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    if data.get("peft_type") == "LORA":
        return "authors" if "lora_inhibition" in data else "lora"
    return "ina"


def _info(args: argparse.Namespace) -> int:
    path = _adapter_folder(args.path, "PATH")
    config = _checked(path, "PATH")
    summary = {
        "format": adapter_format(path),
        "inhibition": config.inhibition,
        "activation": config.activation,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": sorted(config.target_modules)
        if isinstance(config.target_modules, set)
        else config.target_modules,
        "task_type": config.task_type,
        "base_model_name_or_path": config.base_model_name_or_path,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser of ``command`` (for its error line), else ``parser``."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if command in getattr(action, "choices", {}):
            return action.choices[command]
    return parser


def _is_input_error(error: Exception) -> bool:
    """Whether ``error`` is the user's input (one line, exit code 2) rather than a bug (a traceback)."""
    if isinstance(error, (UsageError, FileNotFoundError, NotADirectoryError)):
        return True
    loading = sys.modules.get("ina.core.loading")  # loaded if it raised: no framework import here
    return loading is not None and isinstance(error, getattr(loading, "AdapterFileError", ()))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ina` command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((token for token in argv if not token.startswith("-")), None)
    parser = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_extra_args", False):
        _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    handler = args.handler
    try:
        result = handler(args, unknown) if getattr(args, "accepts_extra_args", False) else handler(args)
    except Exception as error:
        if not _is_input_error(error):
            raise
        print(f"ina {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
