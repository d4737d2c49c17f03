"""`transformers.TrainingArguments` for every command that trains: our flags over the machine's defaults.

Deprecated names are translated, memory is pinned only for a GPU, CPU processes of a distributed run use
gloo, and a DeepSpeed ZeRO-3 config that would save an empty adapter is refused. Also here: the one-line
warning when the flags leave every step at learning rate 0 (`learning_rate_check`), and DeepSpeed's
accelerator detection kept from announcing "Setting accelerator to CPU" in every training process
(`quiet_accelerator_detection`). This module imports no framework at import time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import typing
from collections.abc import Iterator, Mapping, Sequence
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


_logger = logging.getLogger(__name__)


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
    translated (``--gradient_checkpointing`` -> ``--activation_checkpointing``); memory is pinned only
    for a GPU; CPU processes of a distributed run
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
        with quiet_accelerator_detection():  # a --deepspeed config imports DeepSpeed here
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


def learning_rate_check() -> Any:
    """A callback that warns, in one line, when the schedule gives every step of the run a learning rate of 0.

    Warm-up starts at 0, as in every Hugging Face schedule (kept, so that runs compare with theirs): with
    ``--max_steps 1`` and any warm-up, the one step trains nothing.
    """
    from transformers import TrainerCallback

    class LearningRateCheck(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            scheduler = kwargs.get("lr_scheduler")
            factors = getattr(scheduler, "lr_lambdas", None)
            if not state.is_world_process_zero or not factors:
                return
            steps = range(state.global_step, state.max_steps)
            if steps and all(factor(step) == 0 for step in steps for factor in factors):
                warmup = args.get_warmup_steps(state.max_steps)
                _logger.warning(
                    f"warning: every step of this run has learning rate 0 (warm-up starts at 0 and takes {warmup} "
                    f"of its {state.max_steps} step(s)), so the adapter will not change; pass --warmup_steps 0 "
                    "or more --max_steps"
                )

    return LearningRateCheck()


# DeepSpeed's accelerator detection, on its first use in a process (accelerate imports DeepSpeed whenever it
# is installed), warns that it fell back to the CPU. On a machine without a GPU that is no news.
_DETECTION_NOTE = "Setting accelerator to CPU"


def _not_detection_note(record: logging.LogRecord) -> bool:
    return not (record.funcName == "get_accelerator" and str(record.msg).startswith(_DETECTION_NOTE))


@contextlib.contextmanager
def quiet_accelerator_detection() -> Iterator[None]:
    """Inside the block, DeepSpeed's logger drops its "Setting accelerator to CPU" record (that one only:
    every other DeepSpeed warning still shows). Detection runs once per process, so this is its only chance."""
    deepspeed_logger = logging.getLogger("DeepSpeed")  # the name DeepSpeed logs under
    deepspeed_logger.addFilter(_not_detection_note)
    try:
        yield
    finally:
        deepspeed_logger.removeFilter(_not_detection_note)
