"""`ina sweep`: one experiment over a grid of inhibition ratios × seeds (× activations × ranks), resumable.

Each run writes its own folder ``runs/<name>/`` whose ``result.json`` is written last and atomically, so a
run with a ``result.json`` is finished and skipped when the sweep is started again. After the grid the
sweep writes its summaries (`ina.experiments.sweep_report`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ina.experiments.arguments import SweepArguments
from ina.experiments.common import ExperimentError
from ina.experiments.sweep_report import write_summaries
from ina.foundation.arguments import flag_given
from ina.foundation.files import read_json, write_json
from ina.foundation.harness import RESULT_FILE

# Flags the sweep sets per run; passing them through as single values would fight the grid.
GRID_FLAGS = ("inhibition", "activation", "lora_r", "seed", "output_dir")


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    inhibition: float
    activation: str
    r: int
    seed: int

    @property
    def name(self) -> str:
        return f"inhibition{self.inhibition:g}-{self.activation}-r{self.r}-seed{self.seed}"

    def flags(self, folder: Path) -> list[str]:
        """The experiment flags that make this run, writing into ``folder``."""
        return [
            *("--inhibition", f"{self.inhibition:g}", "--activation", self.activation),
            *("--lora_r", str(self.r), "--seed", str(self.seed), "--output_dir", str(folder)),
        ]


def _numbers(flag: str, value: str, kind: type, example: str) -> list[Any]:
    """``"1,2"`` -> ``[kind(1), kind(2)]``, with an error naming ``flag``."""
    try:
        values = [kind(v) for v in value.split(",") if v.strip()]
    except ValueError as error:
        noun = "integers" if kind is int else "numbers"
        raise ExperimentError(
            f"{flag} must be comma-separated {noun}, e.g. {example}; got {value!r}"
        ) from error
    if not values:
        raise ExperimentError(f"{flag} needs at least one value; got {value!r}")
    return values


def parse_floats(flag: str, value: str) -> list[float]:
    """``"0,0.1"`` -> ``[0.0, 0.1]``, with an error naming ``flag``."""
    return _numbers(flag, value, float, "0,0.1,0.3,0.9")


def parse_ints(flag: str, value: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``, with an error naming ``flag``."""
    return _numbers(flag, value, int, "1,2,3")


def _rejected(field: str, values: list[Any]) -> list[Any]:
    """The ``values`` that `InAConfig` (the one home of the adapter's rules) refuses for ``field``."""
    from ina.core.config import InAConfig, InAConfigError

    rejected = []
    for value in values:
        try:
            InAConfig(**{field: value})
        except InAConfigError as error:
            if any(problem.startswith(f"`{field}`") for problem in error.problems):
                rejected.append(value)
    return rejected


def grid(arguments: SweepArguments) -> list[RunSpec]:
    """The runs of the sweep, LoRA (ρ = 0) first, validated before any training."""
    ratios = parse_floats("--inhibition", arguments.inhibition)
    bad = _rejected("inhibition", ratios)
    if bad:
        raise ExperimentError(f"--inhibition ratios must be in [0, 1); got {bad}")
    seeds = parse_ints("--seeds", arguments.seeds)
    ranks = parse_ints("--lora_r", arguments.lora_r)
    if _rejected("r", ranks):
        raise ExperimentError(f"--lora_r ranks must be positive; got {ranks}")
    activations = [a.strip() for a in arguments.activation.split(",") if a.strip()]
    if not activations or _rejected("activation", activations):
        from ina.core.functional import ACTIVATIONS

        raise ExperimentError(
            f"--activation must list activations from {list(ACTIVATIONS)}; got {arguments.activation!r}"
        )
    return [
        RunSpec(inhibition, activation, r, seed)
        for activation, r, inhibition, seed in itertools.product(
            activations, ranks, sorted(dict.fromkeys(ratios)), dict.fromkeys(seeds)
        )
    ]


def run_sweep(
    arguments: SweepArguments,
    extra: list[str],
    run_one: Callable[[list[str]], dict[str, Any]],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run every unfinished point of the grid with ``run_one(argv)``, then write the summary files.

    ``run_one`` gets the experiment's own argument list (``extra`` plus the grid's flags) and returns the
    run's record; it must write ``result.json`` in the ``--output_dir`` it is given. ``log`` reports progress.
    """
    for flag in GRID_FLAGS:
        if flag_given(extra, flag):
            hint = "--seeds" if flag == "seed" else f"--{flag}"
            raise ExperimentError(
                f"--{flag} is set by the sweep for each run; give the list to `ina sweep {hint}` instead"
            )
    specs = grid(arguments)
    root = Path(arguments.folder)
    check_same_command(root, arguments.experiment, extra)
    records = []
    for index, spec in enumerate(specs, start=1):
        folder = root / "runs" / spec.name
        record = read_result(folder)
        if record is not None:
            log(f"[{index}/{len(specs)}] {spec.name}: finished earlier, skipped")
        else:
            started = time.perf_counter()
            log(f"[{index}/{len(specs)}] {spec.name}: running")
            record = run_one([*extra, *spec.flags(folder)])
            seconds = time.perf_counter() - started
            log(f"[{index}/{len(specs)}] {spec.name}: {_short(record['metrics'])} ({seconds:.0f} s)")
        records.append({**record, "run": spec.name})
    write_summaries(root, records, arguments.experiment)
    return records


def check_same_command(root: Path, experiment: str, extra: list[str]) -> None:
    """Record the experiment's flags in ``sweep.json``; refuse to resume a folder swept with other flags
    (its finished runs would be silently reused for a different experiment)."""
    command = {"experiment": experiment, "flags": list(extra)}
    path = root / "sweep.json"
    if path.is_file():
        previous = read_json(path)
        if previous != command:
            raise ExperimentError(
                f"--output_dir {str(root)!r} holds a sweep of `{previous['experiment']} {' '.join(previous['flags'])}`, "
                f"not `{experiment} {' '.join(extra)}`; pass a new --output_dir (or the same flags to resume)"
            )
    else:
        write_json(path, command)


def read_result(folder: Path) -> dict[str, Any] | None:
    """The run's record if it finished (``result.json`` readable), else ``None``."""
    try:
        return read_json(folder / RESULT_FILE)
    except (OSError, json.JSONDecodeError):
        return None


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
