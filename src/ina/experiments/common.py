"""What `ina glue`, `ina squad` and `ina sweep` share: the error type, Trainer defaults, tokenizer, threads and
the output folder's checks."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ina.foundation.errors import UsageError
from ina.foundation.models import torch_threads

# The authors' recipe (REFERENCE.md §4) for the Trainer; a flag or config value wins over each.
TRAINER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "save_strategy": "no",
    "report_to": "none",
    "logging_steps": 50,
    "label_names": ["labels"],
}


class _HasThreads(Protocol):
    torch_threads: int | None


Arguments = TypeVar("Arguments", bound=_HasThreads)
Recipe = Callable[[Arguments, list[str]], dict[str, Any]]


class ExperimentError(UsageError):
    """Bad input for an experiment, found before any training; the message names the flag and the fix."""


def uses_torch_threads(recipe: Recipe[Arguments]) -> Callable[[Arguments, Sequence[str]], dict[str, Any]]:
    """Make ``recipe(arguments, training_flags)`` run with ``arguments.torch_threads`` CPU threads."""

    @functools.wraps(recipe)
    def run(arguments: Arguments, training_flags: Sequence[str] = ()) -> dict[str, Any]:
        with torch_threads(arguments.torch_threads):
            return recipe(arguments, list(training_flags))

    return run


def adapter_fields(arguments: Any, seed: int) -> dict[str, Any]:
    """The adapter's settings and the training seed, as every run's ``result.json`` reports them."""
    return {
        "inhibition": arguments.inhibition,
        "activation": arguments.activation,
        "r": arguments.lora_r,
        "lora_alpha": arguments.lora_alpha,
        "seed": seed,
    }


def timing_fields(run: Any) -> dict[str, Any]:
    """The training loss and time of a `ina.foundation.harness.TrainingRun`, as ``result.json`` reports them."""
    return {
        "train_loss": run.train_loss,
        "train_seconds": round(run.seconds, 2),
        "cpu_seconds": round(run.cpu_seconds, 2),
    }


def load_tokenizer(model_name_or_path: str, tokenizer_name: str | None = None) -> Any:
    """A fast tokenizer (offsets are needed for QA) with a padding token; errors name the flag to change."""
    from ina.foundation.harness import errors_as
    from ina.foundation.models import load_tokenizer as load

    with errors_as(ExperimentError):
        return load(model_name_or_path, "--model_name_or_path", tokenizer_name=tokenizer_name, fast=True)


def claim_output_dir(
    output_dir: str, training: Any, overwrite: bool, inputs: Mapping[str, str | None]
) -> tuple[str | bool | None, list[Path]]:
    """Check ``output_dir`` before any work, as `ina finetune` does; returns (what to resume, what to replace).

    Refused (`ExperimentError`, nothing changed): a folder that is, holds or lies inside one of ``inputs``
    (flag -> path: the model, the data files) or the checkpoint being resumed; a finished run without
    ``overwrite`` (``--overwrite_output_dir``); an unfinished one without ``--resume_from_checkpoint`` (a
    `TrainingArguments` field, read from ``training``) or ``overwrite``. The paths returned (the old run's
    checkpoints and record) are removed by `replace_previous_run` once the data have been read and checked.
    """
    from ina.foundation import harness

    with harness.errors_as(ExperimentError):
        resume = harness.resume_target(training.resume_from_checkpoint, output_dir)
        harness.check_output_dir(output_dir, inputs, resume)
        stale = harness.stale_checkpoints(output_dir, resume, overwrite)
    if overwrite and not resume and (Path(output_dir) / harness.RESULT_FILE).is_file():
        stale.append(Path(output_dir) / harness.RESULT_FILE)  # it would describe the new adapter wrongly
    return resume, stale


def replace_previous_run(stale: Sequence[Path]) -> None:
    """Remove what `claim_output_dir` found of the run being replaced (its checkpoints and record)."""
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
