"""The shared Trainer harness: build, train, time, save, record: what every training recipe does alike.

A recipe (instruction tuning, GLUE, SQuAD) prepares its data and model; the harness runs them::

    from ina.foundation.adapters import inhibition_config
    from ina.foundation.trainer_arguments import training_arguments
    from ina.foundation.harness import build_trainer, is_main_process, peft_model, record, save_adapter, train

    arguments = training_arguments(extra, "outputs/run", {"num_train_epochs": 3}, command="ina glue")
    model = peft_model(base, inhibition_config(adapter_arguments, base, "SEQ_CLS"))
    trainer = build_trainer(model, arguments, train_set, tokenizer=tokenizer, data_collator=collator)
    run = train(trainer)                  # run.output (TrainOutput), run.seconds, run.cpu_seconds
    checks = save_adapter(trainer)        # atomic; whole under FSDP / ZeRO-3; reloaded and compared
    if is_main_process(trainer):
        record("outputs/run", {"train_loss": run.train_loss, "train_seconds": run.seconds, **checks})

Every process of a distributed run calls these functions; only the main process writes files. Errors
are `UsageError`s naming the flag to change (`TrainingError` for the run's own checks); `errors_as`
re-raises them as a recipe's own error type. This module imports no framework at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError
from ina.foundation.exact_loss import exact_loss_trainer
from ina.foundation.files import PathLike, output_problem, overlap_problem, write_json
from ina.foundation.trainer_arguments import (
    check_deepspeed_config,
    learning_rate_check,
    quiet_accelerator_detection,
    training_arguments,
)

__all__ = [
    "RESULT_FILE",
    "TrainingError",
    "TrainingRun",
    "build_trainer",
    "check_deepspeed_config",
    "check_output_dir",
    "errors_as",
    "is_main_process",
    "is_sharded",
    "peft_model",
    "record",
    "resume_target",
    "save_adapter",
    "stale_checkpoints",
    "train",
    "trainable_parameters",
    "training_arguments",
    "verify_adapter_files",
]

RESULT_FILE = "result.json"
_SUMMARY = "training_summary.json"  # what `ina finetune` writes last
_STAGING = ".adapter-staging"


class TrainingError(UsageError):
    """The run cannot go on; the message names the flag or setting to change."""


@contextlib.contextmanager
def errors_as(kind: type[UsageError]) -> Iterator[None]:
    """Re-raise every `UsageError` of the block that is not already a ``kind`` as ``kind`` (same message)."""
    try:
        yield
    except UsageError as error:
        if isinstance(error, kind):
            raise
        raise kind(str(error)) from error


def peft_model(model: Any, config: Any, adapter_name: str = "default", **kwargs: Any) -> Any:
    """``peft.get_peft_model(model, config, ...)``, without PEFT's deprecation noise."""
    from peft import get_peft_model

    from ina.core.registry import without_peft_deprecations

    with without_peft_deprecations():
        return get_peft_model(model, config, adapter_name=adapter_name, **kwargs)


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts (whole sizes under DeepSpeed ZeRO-3, not this process's shard)."""
    sizes = [(getattr(p, "ds_numel", None) or p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trained in sizes if trained), sum(n for n, _ in sizes)


def build_trainer(
    model: Any,
    arguments: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    tokenizer: Any = None,
    data_collator: Any = None,
    compute_metrics: Any = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """A `transformers.Trainer`; without ``eval_dataset`` periodic evaluation is off (``arguments`` is updated).

    A causal LM's eval loss is the token mean over the whole eval set, the same number under any batch
    size and number of processes (`ina.foundation.exact_loss`).

    With activation checkpointing, the frozen base's inputs are made to require gradients, or no
    gradient would reach the adapter through the checkpointed layers.
    """
    from transformers.trainer_utils import IntervalStrategy

    if eval_dataset is None:
        arguments.eval_strategy = IntervalStrategy.NO
    from transformers.trainer_callback import ProgressCallback

    from ina.foundation.progress import trainer_progress

    if getattr(arguments, "activation_checkpointing", False):
        model.enable_input_require_grads()
    with quiet_accelerator_detection():
        trainer = exact_loss_trainer()(
            model=model,
            args=arguments,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator,
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=[*(callbacks or []), learning_rate_check()],
        )
    if type(trainer.pop_callback(ProgressCallback)) is ProgressCallback:  # a notebook's bar is kept
        trainer.add_callback(trainer_progress())  # a bar on a terminal, periodic lines in a log file
    return trainer


@dataclass
class TrainingRun:
    """What `train` returns: the Trainer's `TrainOutput` and how long training took (wall clock and CPU)."""

    output: Any
    seconds: float
    cpu_seconds: float

    @property
    def train_loss(self) -> float:
        """The mean training loss of the run."""
        return float(self.output.training_loss)


def train(trainer: Any, resume: str | bool | None = None) -> TrainingRun:
    """``trainer.train(resume_from_checkpoint=resume)``, timed (see `resume_target` for ``resume``)."""
    from ina.core.registry import without_peft_deprecations

    started, cpu_started = time.perf_counter(), time.process_time()
    with without_peft_deprecations():
        output = trainer.train(resume_from_checkpoint=resume)
    return TrainingRun(output, time.perf_counter() - started, time.process_time() - cpu_started)


def resume_target(
    value: str | None, output_dir: str, flag: str = "--resume_from_checkpoint"
) -> str | bool | None:
    """``value`` as `Trainer.train`'s ``resume_from_checkpoint``: a folder, True (``last``: the newest), or None."""
    if not value or value.lower() in ("false", "no", "none"):
        return None
    if value.lower() in ("true", "last", "latest"):
        from transformers.trainer_utils import get_last_checkpoint

        if not Path(output_dir).is_dir() or get_last_checkpoint(output_dir) is None:
            raise TrainingError(
                f"{flag} {value}: no checkpoint-* folder in --output_dir {output_dir}; "
                "give a checkpoint folder or start without the flag"
            )
        return True
    if not Path(value).is_dir():
        raise TrainingError(f"{flag} {value!r}: no such checkpoint folder")
    return value


def stale_checkpoints(output_dir: PathLike, resume: str | bool | None, overwrite: bool) -> list[Path]:
    """Refuse an ``output_dir`` holding another run unless asked; return the checkpoints a fresh start replaces.

    A finished run (a final adapter or summary) needs ``--overwrite_output_dir``; an unfinished one
    (``checkpoint-*`` only) needs ``--resume_from_checkpoint`` or ``--overwrite_output_dir``. With
    ``overwrite`` and no ``resume``, its ``checkpoint-*`` folders are returned (for the caller to remove:
    they would mix with the new run's); nothing is changed here. Raises `TrainingError` naming the fix.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    checkpoints = sorted(
        (p for p in folder.glob("checkpoint-*") if p.is_dir()), key=lambda p: _step_of(p.name)
    )
    finished = [n for n in ("adapter_model.safetensors", _SUMMARY, RESULT_FILE) if (folder / n).is_file()]
    if overwrite:
        return [] if resume else checkpoints
    if finished:
        raise TrainingError(
            f"--output_dir {folder} holds a finished run ({', '.join(finished)}"
            f"{', ' + checkpoints[-1].name if checkpoints else ''}); nothing was changed. Pass "
            "--overwrite_output_dir to replace it, or choose a new --output_dir"
        )
    if checkpoints and not resume:
        raise TrainingError(
            f"--output_dir {folder} holds an unfinished run ({', '.join(p.name for p in checkpoints)}, no final "
            "adapter); nothing was changed. Pass --resume_from_checkpoint last to continue it, "
            "--overwrite_output_dir to start afresh, or choose a new --output_dir"
        )
    return []


def check_output_dir(
    output_dir: PathLike, inputs: Mapping[str, PathLike | None], resume: str | bool | None = None
) -> None:
    """Refuse, before any work, an ``output_dir`` that is, holds or lies inside one of ``inputs`` (flag -> path
    of the base model, the data files: whatever exists locally), or that is or lies inside the checkpoint
    being resumed (``resume``; the usual ``--output_dir`` holding its own checkpoints is fine), or lies
    under a file. Raises `TrainingError` naming the flags; nothing was changed."""
    local = {flag: path for flag, path in inputs.items() if path and Path(path).exists()}
    problem = overlap_problem(output_dir, "--output_dir", local)
    if not problem and isinstance(resume, str | os.PathLike):
        target, checkpoint = Path(output_dir).resolve(), Path(resume).resolve()
        if checkpoint == target or checkpoint in target.parents:
            problem = overlap_problem(output_dir, "--output_dir", {"--resume_from_checkpoint": resume})
    problem = problem or output_problem(output_dir, "--output_dir", folder=True)
    if problem:
        raise TrainingError(f"{problem}; nothing was changed")


def _step_of(name: str) -> int:
    suffix = name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def is_main_process(trainer: Any) -> bool:
    """Whether this is the process that writes files (the only process of a plain run)."""
    return trainer.args.process_index == 0


def is_sharded(trainer: Any) -> bool:
    """Whether model weights are split across processes (DeepSpeed ZeRO-3 or FSDP), so no process can run it alone."""
    if trainer.is_fsdp_enabled:
        return True
    if trainer.is_deepspeed_enabled:
        return int(trainer.accelerator.state.deepspeed_plugin.zero_stage) == 3
    return False


def save_adapter(
    trainer: Any,
    folder: PathLike | None = None,
    files: Mapping[str, Any] | None = None,
    verify: bool = True,
    rows: Any = None,
) -> dict[str, Any]:
    """Save the trained adapter into ``folder`` (default: the output folder), atomically, once; return checks.

    Every process calls this: ``trainer.save_model`` gathers sharded weights (FSDP full state dict,
    ZeRO-3 16-bit gathering); the main process writes ``files`` (``{name: JSON data}``) next to the
    adapter and moves it into place. Checks: every process ended with the same adapter weights
    (``adapter_checksums``), the saved file has a non-empty A and B per adapted module
    (``adapter_tensors``), and, with ``verify``, the saved adapter reloaded next to the trained one
    gives its logits on a few ``rows`` (default: the eval, else the train dataset)
    (``reload_max_abs_logit_diff``). Raises `TrainingError` when a check fails. The saved files'
    sha256 (``adapter_sha256``) is compared by every later load of the folder (`ina.core.loading`).
    """
    import torch

    from ina.core.loading import CHECKSUM_KEY, adapter_checksums

    out = Path(folder if folder is not None else trainer.args.output_dir)
    main = is_main_process(trainer)
    staging = out / _STAGING
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_fsdp_enabled:
        # a sharded state dict would save each process's shard; the adapter must be whole
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    checks: dict[str, Any] = {}
    sharded = is_sharded(trainer)
    if not sharded:
        checksum = _adapter_checksum(model)
        gathered: list[Any] = [checksum]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, checksum)
        checks["adapter_checksums"] = gathered
        if any(c != gathered[0] for c in gathered):
            raise TrainingError(f"the processes ended with different adapter weights: checksums {gathered}")
    if main:
        for name, data in (files or {}).items():
            write_json(staging / name, data)
        checks["adapter_tensors"] = verify_adapter_files(staging, model)
        checks[CHECKSUM_KEY] = adapter_checksums(staging)  # every later load of the folder compares it
        if verify and not sharded:
            checks["reload_max_abs_logit_diff"] = _reload_logit_diff(trainer, model, staging, rows)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()
    return checks


def _adapter_checksum(model: Any) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def verify_adapter_files(folder: PathLike, model: Any) -> int:
    """Check the adapter saved in ``folder`` has a non-empty A and B for every adapted module; returns the tensor count."""
    from safetensors.torch import load_file

    folder = Path(folder)
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file() or not (folder / "adapter_config.json").is_file():
        raise TrainingError(
            f"saving the adapter wrote no {weights_file.name} / adapter_config.json in {folder}"
        )
    tensors = load_file(str(weights_file))
    expected = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A.default")) * 2
    empty = [name for name, t in tensors.items() if t.numel() == 0]
    if empty or len(tensors) < expected:
        raise TrainingError(
            f"the saved adapter is incomplete: {len(tensors)} tensors for {expected} expected, empty: {empty[:5]}. "
            "Under DeepSpeed ZeRO-3 set `stage3_gather_16bit_weights_on_model_save: true` in the DeepSpeed config"
        )
    return len(tensors)


def _reload_logit_diff(trainer: Any, model: Any, folder: Path, rows: Any) -> float:
    """Load the saved adapter next to the trained one and compare their first outputs on a few rows."""
    import torch

    from ina.core.loading import load_adapter

    if rows is None:
        rows = (
            trainer.eval_dataset if trainer.eval_dataset is not None and len(trainer.eval_dataset) else None
        )
        rows = rows if rows is not None else trainer.train_dataset
    batch = trainer.data_collator([rows[i] for i in range(min(4, len(rows)))])
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            trained = model(**inputs)[0]  # logits (start logits for QA)
            load_adapter(model, folder, adapter_name="ina_reloaded")
            model.set_adapter("ina_reloaded")
            reloaded = model(**inputs)[0]
    finally:
        model.set_adapter("default")
        if "ina_reloaded" in model.peft_config:
            model.delete_adapter("ina_reloaded")
        model.train(was_training)
    difference = float((trained - reloaded).abs().max())
    # same weights, same kernels: identical on CPU; GPU kernels may pick another reduction order
    tolerance = 0.0 if device.type == "cpu" else 1e-3 * float(trained.abs().max())
    if difference > tolerance:
        raise TrainingError(
            f"the saved adapter in {folder} does not reproduce the trained model: max |Δlogit| = {difference}"
        )
    return difference


def record(folder: PathLike, summary: Mapping[str, Any], name: str = RESULT_FILE) -> Path:
    """Write ``summary`` as JSON to ``folder/name`` atomically (call it on the main process only)."""
    return write_json(Path(folder) / name, dict(summary))
