"""Held-out data of an experiment beyond its validation set: a dev split carved from the training rows
(for choosing hyperparameters) and named extra test files (``--test_file NAME=PATH``), and the
validation history a run records while it trains."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from ina.experiments.common import ExperimentError
from ina.foundation.adapters import split_adapter_spec

Row = TypeVar("Row")
DEV_SEED = 0  # the dev split depends on the data only, never on the training seed
DEV_SPLIT = "dev"


def carve_dev(rows: Sequence[Row], fraction: float) -> tuple[list[Row], list[Row]]:
    """``(train, dev)``: a fixed shuffle (seed 0) of ``rows`` puts ``round(fraction · n)`` (≥ 1) rows in dev.

    The training rows keep their order. Raises naming ``--dev_fraction`` when it is not in [0, 1) or
    leaves no training row.
    """
    if not 0 <= fraction < 1:
        raise ExperimentError(f"--dev_fraction must be in [0, 1), e.g. 0.1; got {fraction!r}")
    if fraction == 0:
        return list(rows), []
    order = list(range(len(rows)))
    random.Random(DEV_SEED).shuffle(order)
    size = max(1, round(fraction * len(rows)))
    if size >= len(rows):
        raise ExperimentError(
            f"--dev_fraction {fraction:g} of {len(rows)} training rows leaves none to train on; "
            "pass a smaller share or more training data"
        )
    dev = set(order[:size])
    return [r for i, r in enumerate(rows) if i not in dev], [rows[i] for i in sorted(dev)]


def test_files(values: Sequence[str], reserved: Sequence[str] = ()) -> dict[str, str]:
    """``--test_file NAME=PATH`` values as ``{NAME: PATH}``, in order; names are unique and not ``reserved``."""
    files: dict[str, str] = {}
    for value in values:
        name, path = split_adapter_spec(value, "--test_file", bare_path=False)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ExperimentError(
                f"--test_file NAME must use letters, digits, '_', '.' and '-' only (e.g. ood=test.csv); got {name!r}"
            )
        if name in files or name in (*reserved, DEV_SPLIT):
            raise ExperimentError(
                f"--test_file name {name!r} is given twice or is reserved ({[DEV_SPLIT, *reserved]}); "
                "give each test file its own NAME"
            )
        if not Path(path).is_file():
            raise ExperimentError(
                f"--test_file {value!r}: {path!r} is not a file; give NAME=PATH of a data file"
            )
        files[name] = path
    return files


def evaluation_curve(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Trainer's periodic evaluations as ``[{"step": N, "loss": ..., METRIC: ...}]`` (``eval_`` dropped)."""
    skip = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
    curve = []
    for entry in log_history:
        if "eval_loss" in entry and "step" in entry:
            point = {"step": entry["step"]}
            point.update({k[5:]: v for k, v in entry.items() if k.startswith("eval_") and k not in skip})
            curve.append(point)
    return curve


def trainer_state(trainer: Any) -> dict[str, Any]:
    """What ``trainer_state.json`` holds that `ina viz curves` reads: the log history and the step count."""
    state = trainer.state
    return {
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "num_train_epochs": state.num_train_epochs,
        "log_history": list(state.log_history),
    }
