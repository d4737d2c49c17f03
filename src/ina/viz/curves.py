"""Loss curves of training runs, read from the Hugging Face Trainer's ``trainer_state.json``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ina.foundation.errors import UsageError
from ina.foundation.files import read_json

STATE = "trainer_state.json"


def find_state(run_dir: str | os.PathLike[str]) -> Path:
    """The run's ``trainer_state.json``: in the folder itself, else in its last ``checkpoint-N`` folder."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UsageError(f"RUN_DIR {str(folder)!r} is not a folder; give the --output_dir of a training run")
    if (folder / STATE).is_file():
        return folder / STATE
    checkpoints = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and (path / STATE).is_file()
    ]
    if not checkpoints:
        older = (
            " (its result.json is from a glue/squad/sweep run of an ina version that kept no log history: rerun it)"
            if (folder / "result.json").is_file()
            else ""
        )
        raise UsageError(
            f"RUN_DIR {str(folder)!r} has no {STATE}, in itself or in a checkpoint-* folder{older}; give the "
            f"folder of a training run that holds one: an `ina finetune`, `ina glue`, `ina squad` --output_dir, or a "
            f"sweep's runs/NAME folder (the Hugging Face Trainer writes {STATE} when it saves)"
        )
    return max(checkpoints)[1] / STATE


def read_run(run_dir: str | os.PathLike[str], name: str | None = None) -> dict:
    """Training and validation loss of one run: ``{"name", "path", "train": [{step, loss}], "eval": [...]}``.

    The name defaults to the run folder's name. Entries of ``log_history`` with ``loss`` are training
    losses, those with ``eval_loss`` validation losses; other entries (final summaries) are skipped.
    """
    path = find_state(run_dir)
    try:
        history = read_json(path)["log_history"]
    except (ValueError, KeyError, TypeError) as error:  # JSON or UTF-8 errors are ValueErrors
        raise UsageError(
            f"RUN_DIR {str(run_dir)!r}: {path} is not a Trainer state file with a log_history list ({error})"
        ) from error
    train = [{"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e and "step" in e]
    evaluation = [
        {"step": e["step"], "loss": e["eval_loss"]} for e in history if "eval_loss" in e and "step" in e
    ]
    if not train and not evaluation:
        raise UsageError(
            f"{path}: log_history holds no loss; set --logging_steps (and an eval strategy) so the Trainer logs it"
        )
    return {
        "name": name or Path(run_dir).resolve().name,
        "path": str(path),
        "train": train,
        "eval": evaluation,
    }


def read_runs(run_dirs: list[str]) -> list[dict]:
    """:func:`read_run` for each folder; names are made unique by adding the parent folder when two clash."""
    runs = [read_run(d) for d in run_dirs]
    names = [r["name"] for r in runs]
    for run, run_dir in zip(runs, run_dirs, strict=True):
        if names.count(run["name"]) > 1:
            resolved = Path(run_dir).resolve()
            run["name"] = f"{resolved.parent.name}/{resolved.name}"
    return runs
