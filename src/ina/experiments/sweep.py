"""`ina sweep`: one experiment over a grid of inhibition ratios × seeds (× activations × ranks), resumable.

Each run writes its own folder ``runs/<name>/`` whose ``result.json`` is written last and atomically, so a
run with a ``result.json`` is finished and skipped when the sweep is started again. After the grid the
sweep writes ``results.csv`` (one row per run), ``results.md`` (mean ± std per configuration, LoRA first,
the best mean of each column in bold) and ``results.png`` (metric against ratio, seeds as dots).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ina.experiments.common import RESULT_FILE, ExperimentError, flag_given, write_json, write_text

# Flags the sweep sets per run; passing them through as single values would fight the grid.
GRID_FLAGS = ("inhibition", "activation", "lora_r", "seed", "output_dir")
# GLUE metrics are fractions, reported ×100 like the paper; SQuAD's are already percentages.
PERCENT_SCALE = {"glue": 100.0, "squad": 1.0}


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


def parse_floats(flag: str, value: str) -> list[float]:
    """``"0,0.1"`` -> ``[0.0, 0.1]``, with an error naming ``flag``."""
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError as error:
        raise ExperimentError(
            f"{flag} must be comma-separated numbers, e.g. 0,0.1,0.3,0.9; got {value!r}"
        ) from error
    if not values:
        raise ExperimentError(f"{flag} needs at least one value; got {value!r}")
    return values


def parse_ints(flag: str, value: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``, with an error naming ``flag``."""
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as error:
        raise ExperimentError(
            f"{flag} must be comma-separated integers, e.g. 1,2,3; got {value!r}"
        ) from error
    if not values:
        raise ExperimentError(f"{flag} needs at least one value; got {value!r}")
    return values


def grid(args: argparse.Namespace) -> list[RunSpec]:
    """The runs of the sweep, LoRA (ρ = 0) first, validated before any training."""
    ratios = parse_floats("--inhibition", args.inhibition)
    bad = [r for r in ratios if not 0 <= r < 1]
    if bad:
        raise ExperimentError(f"--inhibition ratios must be in [0, 1); got {bad}")
    seeds = parse_ints("--seeds", args.seeds)
    ranks = parse_ints("--lora_r", args.lora_r)
    if any(r <= 0 for r in ranks):
        raise ExperimentError(f"--lora_r ranks must be positive; got {ranks}")
    activations = [a.strip() for a in args.activation.split(",") if a.strip()]
    from ina.core.functional import ACTIVATIONS

    unknown = [a for a in activations if a not in ACTIVATIONS]
    if unknown or not activations:
        raise ExperimentError(
            f"--activation must list activations from {list(ACTIVATIONS)}; got {args.activation!r}"
        )
    return [
        RunSpec(inhibition, activation, r, seed)
        for activation, r, inhibition, seed in itertools.product(
            activations, ranks, sorted(dict.fromkeys(ratios)), dict.fromkeys(seeds)
        )
    ]


def run_sweep(
    args: argparse.Namespace,
    extra: list[str],
    run_one: Callable[[list[str]], dict[str, Any]],
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every unfinished point of the grid with ``run_one(argv)``, then write the summary files.

    ``run_one`` gets the experiment's own argument list (``extra`` plus the grid's flags) and returns the
    run's record; it must write ``result.json`` in the ``--output_dir`` it is given.
    """
    for flag in GRID_FLAGS:
        if flag_given(extra, flag):
            hint = "--seeds" if flag == "seed" else f"--{flag}"
            raise ExperimentError(
                f"--{flag} is set by the sweep for each run; give the list to `ina sweep {hint}` instead"
            )
    specs = grid(args)
    root = Path(args.output_dir)
    check_same_command(root, args.experiment, extra)
    records = []
    for index, spec in enumerate(specs, start=1):
        folder = root / "runs" / spec.name
        record = read_result(folder)
        if record is not None:
            log(f"[{index}/{len(specs)}] {spec.name}: finished earlier, skipped")
        else:
            started = time.perf_counter()
            argv = [
                *extra,
                *(
                    "--inhibition",
                    f"{spec.inhibition:g}",
                    "--activation",
                    spec.activation,
                    "--lora_r",
                    str(spec.r),
                ),
                *("--seed", str(spec.seed), "--output_dir", str(folder)),
            ]
            log(f"[{index}/{len(specs)}] {spec.name}: running")
            record = run_one(argv)
            log(
                f"[{index}/{len(specs)}] {spec.name}: {_short(record['metrics'])} ({time.perf_counter() - started:.0f} s)"
            )
        records.append({**record, "run": spec.name})
    write_summaries(root, records, args.experiment)
    return records


def check_same_command(root: Path, experiment: str, extra: list[str]) -> None:
    """Record the experiment's flags in ``sweep.json``; refuse to resume a folder swept with other flags
    (its finished runs would be silently reused for a different experiment)."""
    command = {"experiment": experiment, "flags": list(extra)}
    path = root / "sweep.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != command:
            raise ExperimentError(
                f"--output_dir {str(root)!r} holds a sweep of `{previous['experiment']} {' '.join(previous['flags'])}`, "
                f"not `{experiment} {' '.join(extra)}`; pass a new --output_dir (or the same flags to resume)"
            )
    else:
        write_json(path, command)


def read_result(folder: Path) -> dict[str, Any] | None:
    """The run's record if it finished (``result.json`` readable), else ``None``."""
    path = folder / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def label(inhibition: float) -> str:
    """``ρ = 0`` is LoRA; other ratios are InA."""
    return "LoRA (ρ=0)" if inhibition == 0 else f"InA ρ={inhibition:g}"


def summarise(records: Sequence[dict[str, Any]], experiment: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Metric names and one row per configuration: mean and std (sample, n-1) per metric, LoRA first."""
    scale = PERCENT_SCALE.get(experiment, 1.0)
    metric_names = list(dict.fromkeys(name for record in records for name in record["metrics"]))
    groups: dict[tuple[str, int, float], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["activation"], record["r"], record["inhibition"]), []).append(record)
    rows = []
    for (activation, r, inhibition), members in sorted(
        groups.items(), key=lambda item: (item[0][2] != 0, item[0])
    ):
        row: dict[str, Any] = {
            "inhibition": inhibition,
            "activation": activation,
            "r": r,
            "runs": len(members),
        }
        for name in metric_names:
            values = [scale * m["metrics"][name] for m in members if name in m["metrics"]]
            row[name] = (_mean(values), _std(values))
        rows.append(row)
    return metric_names, rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def markdown_table(metric_names: list[str], rows: list[dict[str, Any]]) -> str:
    """The table of `summarise`, best mean of each metric in bold (every metric: higher is better)."""
    vary_activation = len({row["activation"] for row in rows}) > 1
    vary_r = len({row["r"] for row in rows}) > 1
    header = [
        "adapter",
        *(["activation"] if vary_activation else []),
        *(["r"] if vary_r else []),
        *metric_names,
        "seeds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {
        name: max((row[name][0] for row in rows if not math.isnan(row[name][0])), default=math.nan)
        for name in metric_names
    }
    for row in rows:
        cells = [label(row["inhibition"])]
        cells += [row["activation"]] if vary_activation else []
        cells += [str(row["r"])] if vary_r else []
        for name in metric_names:
            mean, std = row[name]
            text = f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")
            cells.append(f"**{text}**" if mean == best[name] else text)
        cells.append(str(row["runs"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(metric_names: list[str], rows: list[dict[str, Any]]) -> str:
    """One plain sentence: which configuration won the first metric, and whether that beats the noise."""
    if not metric_names or not rows:
        return "No finished runs."
    name = metric_names[0]
    ranked = sorted(rows, key=lambda row: row[name][0], reverse=True)
    winner = ranked[0]
    text = f"Best mean {name}: {label(winner['inhibition'])} ({winner[name][0]:.2f})."
    lora = next((row for row in rows if row["inhibition"] == 0), None)
    if lora is None or len(rows) < 2:
        return text
    runner = lora if winner is not lora else ranked[1]
    gap = winner[name][0] - runner[name][0]
    spread = (
        max(s for s in (winner[name][1], runner[name][1]) if not math.isnan(s))
        if winner["runs"] > 1
        else math.nan
    )
    versus = f"{label(runner['inhibition'])} ({runner[name][0]:.2f})"
    if gap == 0:
        return text + f" It ties with {versus}: no ratio wins."
    if math.isnan(spread):
        return (
            text
            + f" It leads {versus} by {gap:.2f} points, from one seed each: no claim about noise can be made."
        )
    if gap <= spread:
        return (
            text
            + f" Its lead over {versus} is {gap:.2f} points, within one standard deviation ({spread:.2f}): noise."
        )
    return text + f" It leads {versus} by {gap:.2f} points, more than one standard deviation ({spread:.2f})."


def write_summaries(root: Path, records: Sequence[dict[str, Any]], experiment: str) -> None:
    """``results.csv``, ``results.md`` and ``results.png`` in ``root``, each written atomically."""
    metric_names, rows = summarise(records, experiment)
    fields = [
        "run",
        "experiment",
        "task",
        "inhibition",
        "activation",
        "r",
        "seed",
        *metric_names,
        "train_seconds",
        "train_samples",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record, **record["metrics"]})
    write_text(root / "results.csv", buffer.getvalue())
    task = next((r.get("task") for r in records if r.get("task")), experiment)
    scale = " (×100)" if PERCENT_SCALE.get(experiment, 1.0) != 1.0 else ""
    text = (
        f"# {experiment} sweep: {task}\n\nMean ± sample std over seeds{scale}; best mean per column in **bold**; "
        "ρ = 0 is plain LoRA.\n\n"
        + markdown_table(metric_names, rows)
        + "\n"
        + verdict(metric_names, rows)
        + "\n"
    )
    write_text(root / "results.md", text)
    plot(root / "results.png", metric_names, rows, records, experiment, str(task))


def plot(
    path: Path,
    metric_names: list[str],
    rows: list[dict[str, Any]],
    records: Sequence[dict[str, Any]],
    experiment: str,
    task: str,
) -> None:
    """The first metric against the inhibition ratio: mean ± std per configuration, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metric_names:
        return
    name = metric_names[0]
    scale = PERCENT_SCALE.get(experiment, 1.0)
    figure, axes = plt.subplots(figsize=(6, 4))
    for activation, r in dict.fromkeys((row["activation"], row["r"]) for row in rows):
        members = [row for row in rows if (row["activation"], row["r"]) == (activation, r)]
        x = [row["inhibition"] for row in members]
        means = [row[name][0] for row in members]
        errors = [0.0 if math.isnan(row[name][1]) else row[name][1] for row in members]
        axes.errorbar(x, means, yerr=errors, marker="o", capsize=4, label=f"{activation}, r={r}")
        seeds = [
            rec
            for rec in records
            if (rec["activation"], rec["r"]) == (activation, r) and name in rec["metrics"]
        ]
        axes.scatter(
            [rec["inhibition"] for rec in seeds],
            [scale * rec["metrics"][name] for rec in seeds],
            s=12,
            alpha=0.4,
        )
    axes.set_xlabel("inhibition ratio ρ (0 = LoRA)")
    axes.set_ylabel(name + (" ×100" if scale != 1.0 else ""))
    axes.set_title(f"{experiment} {task}: InA vs LoRA (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=120)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        Path(temporary).unlink(missing_ok=True)
