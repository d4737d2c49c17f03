"""`ina sweep`: one experiment over a grid of inhibition ratios × seeds (× activations × ranks), resumable.

Each run writes its own folder ``runs/<name>/`` whose ``result.json`` is written last and atomically, so a
run with a ``result.json`` is finished and skipped when the sweep is started again. After the grid the
sweep writes its summaries (`ina.experiments.sweep_report`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ina.experiments.arguments import SweepArguments
from ina.experiments.backends import Job, read_result, run_local
from ina.experiments.common import ExperimentError
from ina.experiments.heldout import test_files
from ina.experiments.sweep_report import write_summaries
from ina.foundation.arguments import flag_given
from ina.foundation.files import read_json, write_json

__all__ = [
    "GRID_FLAGS",
    "PERFORMANCE_FLAGS",
    "RunSpec",
    "check_same_command",
    "experiment_flags",
    "grid",
    "jobs",
    "read_result",
    "run_sweep",
]

# Flags the sweep sets per run; passing them through as single values would fight the grid.
GRID_FLAGS = ("inhibition", "activation", "lora_r", "seed", "output_dir", "dev_fraction")
# Flags that change how fast a run goes or what it prints, not what it computes: not part of the sweep's
# identity, so a sweep may be resumed with other values (e.g. more --torch_threads on a quieter machine).
PERFORMANCE_FLAGS = (
    "torch_threads",
    "disable_tqdm",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "overwrite_output_dir",
)


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid (``learning_rate`` None: the experiment's own rate, not in the name)."""

    inhibition: float
    activation: str
    r: int
    seed: int
    learning_rate: float | None = None

    @property
    def name(self) -> str:
        rate = "" if self.learning_rate is None else f"-lr{self.learning_rate:g}"
        return f"inhibition{self.inhibition:g}-{self.activation}-r{self.r}{rate}-seed{self.seed}"

    def flags(self, folder: Path) -> list[str]:
        """The experiment flags that make this run, writing into ``folder`` (which holds no finished run:
        whatever an interrupted attempt left there is replaced)."""
        rate = [] if self.learning_rate is None else ["--learning_rate", f"{self.learning_rate:g}"]
        return [
            *("--inhibition", f"{self.inhibition:g}", "--activation", self.activation),
            *("--lora_r", str(self.r), *rate, "--seed", str(self.seed), "--output_dir", str(folder)),
            "--overwrite_output_dir",
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
    rates: list[float | None] = [None]
    if arguments.learning_rate is not None:
        rates = list(dict.fromkeys(parse_floats("--learning_rate", arguments.learning_rate)))
        if any(rate is not None and not rate > 0 for rate in rates):
            raise ExperimentError(f"--learning_rate values must be positive, e.g. 1e-4,3e-4; got {rates}")
    return [
        RunSpec(inhibition, activation, r, seed, rate)
        for activation, r, inhibition, rate, seed in itertools.product(
            activations, ranks, sorted(dict.fromkeys(ratios)), rates, dict.fromkeys(seeds)
        )
    ]


def jobs(arguments: SweepArguments, extra: list[str]) -> list[Job]:
    """The sweep's runs as backend jobs: ``extra`` (the experiment's flags) plus each point's own flags."""
    root = Path(arguments.folder)
    return [
        Job(spec.name, [*extra, *spec.flags(root / "runs" / spec.name)], root / "runs" / spec.name)
        for spec in grid(arguments)
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
    With ``--select_on dev`` every run also holds out ``--dev_fraction`` of its training rows as dev.
    """
    for flag in GRID_FLAGS:
        if flag_given(extra, flag):
            hint = {"seed": "--seeds", "dev_fraction": "--select_on dev --dev_fraction"}.get(
                flag, f"--{flag}"
            )
            raise ExperimentError(
                f"--{flag} is set by the sweep for each run; give the list to `ina sweep {hint}` instead"
            )
    test_files([value for name, value in _pairs(extra) if name == "--test_file"])  # before any run
    settings = None
    if arguments.backend == "ray":
        from ina.experiments.ray_backend import RaySettings, check_settings, run_ray

        settings = RaySettings(
            arguments.ray_address, arguments.resources_per_run, arguments.max_retries, arguments.on_failure
        )
        check_settings(settings)
    if arguments.select_on == "dev":
        extra = [*extra, "--dev_fraction", f"{arguments.dev_share:g}"]
    specs = grid(arguments)
    root = Path(arguments.folder)
    check_same_command(root, arguments.experiment, extra)
    errors: dict[str, str] = {}
    if settings is not None:
        records, errors = run_ray(jobs(arguments, extra), arguments.experiment, settings, log)
    else:
        records = run_local(jobs(arguments, extra), run_one, log)
    rows = [
        {
            **records[spec.name],
            "run": spec.name,
            "learning_rate": spec.learning_rate or records[spec.name].get("learning_rate"),
        }
        for spec in specs
        if spec.name in records
    ]
    if rows:
        write_summaries(root, rows, arguments.experiment, select_on=arguments.select_on)
    if errors:
        raise ExperimentError(
            f"{len(errors)} of {len(specs)} runs failed ({', '.join(errors)}; their errors are above); the "
            f"summaries cover the {len(rows)} that finished; rerun the same command to retry the others"
        )
    return rows


def check_same_command(root: Path, experiment: str, extra: list[str]) -> None:
    """Record the experiment's flags in ``sweep.json``; refuse to resume a folder swept with other flags
    (its finished runs would be silently reused for a different experiment)."""
    command = {"experiment": experiment, "flags": list(extra)}
    path = root / "sweep.json"
    if path.is_file():
        previous = read_json(path)
        before, now = experiment_flags(previous["flags"]), experiment_flags(extra)
        if (previous["experiment"], before) != (experiment, now):
            raise ExperimentError(
                f"--output_dir {str(root)!r} holds a sweep of `{previous['experiment']} {' '.join(before)}`, "
                f"not `{experiment} {' '.join(now)}`; pass a new --output_dir (or the same flags to resume; "
                f"{', '.join('--' + f for f in PERFORMANCE_FLAGS[:2])} and other speed settings may differ)"
            )
    else:
        write_json(path, command)


def experiment_flags(argv: list[str]) -> list[str]:
    """``argv`` without the `PERFORMANCE_FLAGS` (``--flag value``, ``--flag=value`` or a bare boolean ``--flag``)."""
    kept: list[str] = []
    skip_value = False
    for token in argv:
        if skip_value:
            skip_value = False
            if not token.startswith("--"):
                continue
        name = token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else None
        if name in PERFORMANCE_FLAGS:
            skip_value = "=" not in token
            continue
        kept.append(token)
    return kept


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    """``(--flag, value)`` for every ``--flag value`` and ``--flag=value`` in ``argv``."""
    pairs: list[tuple[str, str]] = []
    for index, token in enumerate(argv):
        if token.startswith("--") and "=" in token:
            flag, value = token.split("=", 1)
            pairs.append((flag, value))
        elif token.startswith("--") and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            pairs.append((token, argv[index + 1]))
    return pairs
