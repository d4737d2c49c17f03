"""`ina export lora SRC DST`: an InA adapter as a plain LoRA for vLLM, SGLang and llama.cpp, with its fidelity."""

from __future__ import annotations

import argparse
import sys

from ina.export.options import ExportOptions
from ina.foundation.arguments import add_arguments, flag_fields


class _Defaults(argparse.HelpFormatter):
    """Help that shows a flag's default when it says something (not empty, not already in the text)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default in (None, "", False, argparse.SUPPRESS)
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {action.default})"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `ina export` and its `lora` subcommand to the `ina` parser."""
    export = subparsers.add_parser(
        "export",
        description="Convert InA adapters for engines that serve only LoRA (vLLM, SGLang, llama.cpp).",
    )
    commands = export.add_subparsers(dest="export_command", metavar="EXPORT_COMMAND")

    def usage(args: argparse.Namespace) -> int:
        export.print_help()
        return 2

    export.set_defaults(handler=usage)
    lora = commands.add_parser(
        "lora",
        formatter_class=_Defaults,
        help="fit the LoRA that best reproduces an InA adapter on calibration text; report how close it is",
        description=(
            "Runs the base model with the InA adapter SRC over calibration text, fits for every adapted layer the "
            "rank-k linear map that best reproduces the InA branch in least squares (closed form), and writes it "
            "as a plain PEFT LoRA folder DST (peft_type LORA) with export_report.json: per-layer held-out error, "
            "next-token KL and top-1 agreement (InA vs export, InA vs base) and held-out answers side by side. "
            "ρ = 0 adapters are copied exactly."
        ),
    )
    lora.add_argument(
        "src", metavar="SRC", help="the InA adapter folder (adapter_config.json + adapter_model.safetensors)"
    )
    lora.add_argument(
        "dst", metavar="DST", help="the LoRA folder to write (refused if it exists, unless --overwrite)"
    )
    add_arguments(lora, ExportOptions, given_only=False)
    lora.set_defaults(handler=_lora)


def _lora(args: argparse.Namespace) -> int:
    from ina.export.export import export_lora

    values = {f.name: getattr(args, f.name) for f in flag_fields(ExportOptions)}
    options = ExportOptions(src=args.src, dst=args.dst, **values)
    export_lora(options, log=print)
    print(
        f"wrote {options.dst} (LoRA"
        + (" + adapter.gguf" if options.format == "gguf" else "")
        + ", export_report.json)"
    )
    sys.stdout.flush()
    return 0
