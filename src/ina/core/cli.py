"""`ina convert` and `ina info`: adapter files on the command line."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the core's subcommands to the `ina` parser."""
    convert = subparsers.add_parser(
        "convert",
        help="rewrite an adapter (the authors' LORA+lora_inhibition format, or plain LoRA) as an InA adapter",
    )
    convert.add_argument("src", help="folder with adapter_config.json and adapter_model.safetensors")
    convert.add_argument("dst", help="new folder to write (must not exist)")
    convert.set_defaults(handler=_convert)

    info = subparsers.add_parser(
        "info", help="print how ina reads an adapter folder (format, ρ, rank, targets)"
    )
    info.add_argument("path")
    info.set_defaults(handler=_info)


def _convert(args: argparse.Namespace) -> int:
    from ina.core.loading import convert_adapter

    config = convert_adapter(args.src, args.dst)
    print(f"wrote {args.dst}: InA adapter, inhibition={config.inhibition}, activation={config.activation}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ina.core.loading import read_adapter_config

    config = read_adapter_config(args.path)
    summary = {
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
