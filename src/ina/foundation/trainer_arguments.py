"""`transformers.TrainingArguments` for every command that trains: our flags over the machine's defaults.

Deprecated names are translated, progress bars are off when stderr is not a terminal, memory is pinned
only for a GPU, CPU processes of a distributed run use gloo, and a DeepSpeed ZeRO-3 config that would save
an empty adapter is refused. This module imports no framework at import time.
"""

from __future__ import annotations

import json
import os
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ina.foundation.arguments import flag_given, flag_value, to_argv
from ina.foundation.errors import UsageError, one_line

# TrainingArguments names transformers deprecated (a FutureWarning each run) -> the current ones.
# The old spellings stay accepted on our command lines and in config files.
RENAMED_TRAINING_FLAGS: dict[str, str] = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def _current_names(argv: Sequence[str]) -> list[str]:
    renamed = []
    for token in argv:
        match = re.fullmatch(r"--([A-Za-z_-]+)(=.*)?", token)
        name = match.group(1).replace("-", "_") if match else ""
        if name in RENAMED_TRAINING_FLAGS:
            token = f"--{RENAMED_TRAINING_FLAGS[name]}{match.group(2) or ''}"  # type: ignore[union-attr]
        renamed.append(token)
    return renamed


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _machine_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    if not sys.stderr.isatty():  # progress bars redraw with escape codes; a log file wants plain lines
        defaults["disable_tqdm"] = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        defaults["ddp_find_unused_parameters"] = False
        if not _cuda():
            # accelerate only runs CPU processes as one data-parallel job when told they are CPU processes
            defaults["ddp_backend"] = "gloo"
            defaults["use_cpu"] = True
    return defaults


def training_arguments(
    extra: Sequence[str],
    output_dir: str,
    defaults: Mapping[str, Any] | None = None,
    command: str = "this command",
) -> Any:
    """`transformers.TrainingArguments` from ``extra`` (``--flag value`` tokens) over ``defaults``.

    A default is used only when ``extra`` does not give that flag. Also: deprecated names are
    translated (``--gradient_checkpointing`` -> ``--activation_checkpointing``); progress bars are off
    when stderr is not a terminal; memory is pinned only for a GPU; CPU processes of a distributed run
    use gloo; a DeepSpeed ZeRO-3 config that would save an empty adapter is refused. Raises
    `UsageError` naming a flag that neither ``command`` nor TrainingArguments knows, or a bad value.
    """
    from transformers import HfArgumentParser, TrainingArguments

    extra = _current_names(extra)
    check_deepspeed_config(flag_value(extra, "deepspeed"))
    values = {"output_dir": output_dir, **_machine_defaults(), **(defaults or {})}
    argv = _current_names(to_argv({k: v for k, v in values.items() if not flag_given(extra, k)}))
    parser = HfArgumentParser(TrainingArguments)

    def refuse(message: str) -> typing.NoReturn:  # argparse would print its usage block and exit
        raise UsageError(f"{message} (a transformers.TrainingArguments flag of `{command}`)")

    parser.error = refuse  # type: ignore[method-assign]
    try:
        (arguments, remaining) = parser.parse_args_into_dataclasses(
            args=[*argv, *extra], return_remaining_strings=True
        )
    except UsageError:
        raise
    except ValueError as error:  # TrainingArguments' own consistency checks
        raise UsageError(f"TrainingArguments: {one_line(error)}") from error
    if remaining:
        raise UsageError(
            f"unrecognized arguments: {' '.join(remaining)} (neither an `{command}` flag, see `{command} "
            "--help`, nor a transformers.TrainingArguments field)"
        )
    if not flag_given(extra, "dataloader_pin_memory") and (arguments.use_cpu or not _cuda()):
        arguments.dataloader_pin_memory = False  # pinning needs a GPU; on a CPU torch warns per data loader
    return arguments


def check_deepspeed_config(deepspeed: Any, flag: str = "--deepspeed") -> None:
    """Refuse a ZeRO-3 config (file, JSON text or dict) that would save an empty adapter (weights not gathered)."""
    if not deepspeed:
        return
    config = deepspeed
    if isinstance(deepspeed, str) and deepspeed.lstrip().startswith("{"):
        config = json.loads(deepspeed)
    if not isinstance(config, dict):
        path = Path(str(deepspeed))
        if not path.is_file():
            raise UsageError(f"{flag} {deepspeed!r}: no such DeepSpeed config file")
        config = json.loads(path.read_text(encoding="utf-8"))
    zero = config.get("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise UsageError(
            f"{flag} {deepspeed!r}: ZeRO stage 3 without `stage3_gather_16bit_weights_on_model_save: true` saves "
            "an empty adapter (each process holds only a shard); set it to true under zero_optimization "
            "(see examples/accelerate/ds_zero3.json)"
        )
