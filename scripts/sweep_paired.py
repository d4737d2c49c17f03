#!/usr/bin/env python
"""Paired tables of an `ina sweep` folder, from its finished runs (``runs/*/result.json``).

    .venv/bin/python scripts/sweep_paired.py outputs/science/sweep-rho09 [--pair 0.9@0.003:0@0.001 ...]

`ina sweep` summarises the grid of the command that wrote the summaries; this reads every finished run
of the folder, so it also covers a grid run in pieces, and prints (and writes ``paired.md`` in the
folder):

1. every (ratio, learning rate) cell: validation accuracy ×100, mean ± sample std, its dev mean, and the
   paired difference from LoRA at the same rate with its 95 % t interval (`ina.experiments.sweep_stats`,
   the sweep's own statistics), and in how many seeds the ratio beat / tied / lost to LoRA;
2. each ``--pair RATIO@RATE:RATIO@RATE`` (e.g. ρ 0.9 at 3e-3 against LoRA at 1e-3, each at the rate an
   earlier sweep chose on dev), paired by seed in the same way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from ina.experiments.sweep_report import label
from ina.experiments.sweep_stats import interval_text, paired_difference
from ina.foundation.files import read_json, write_text

SCALE = 100.0  # GLUE accuracy, reported ×100 as the sweep does


def finished_runs(folder: Path) -> list[dict[str, Any]]:
    return [read_json(path) for path in sorted((folder / "runs").glob("*/result.json"))]


def cells(runs: list[dict[str, Any]]) -> dict[tuple[float, float], list[dict[str, Any]]]:
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["inhibition"], run["learning_rate"]), []).append(run)
    return dict(sorted(groups.items()))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{std}"


def _wins(runs: list[dict[str, Any]], baseline: list[dict[str, Any]], metric: str) -> str:
    base = {r["seed"]: r["metrics"][metric] for r in baseline}
    diffs = [r["metrics"][metric] - base[r["seed"]] for r in runs if r["seed"] in base]
    return f"{sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} / {sum(d < 0 for d in diffs)}"


def _row(
    name: str, rate: float, members: list[dict[str, Any]], lora: list[dict[str, Any]] | None, metric: str
) -> str:
    values = [SCALE * r["metrics"][metric] for r in members]
    dev = [SCALE * r["dev_metrics"][metric] for r in members if r.get("dev_metrics")]
    if lora is None or members is lora:
        delta, wins = "—", "—"
    else:
        delta = interval_text(paired_difference(members, lora, metric, SCALE))
        wins = _wins(members, lora, metric)
    return (
        f"| {name} | {rate:g} | {_mean_std(values)} | {_mean_std(dev)} | {delta} | {wins} | {len(members)} |"
    )


def report(folder: Path, pairs: list[str]) -> str:
    runs = finished_runs(folder)
    if not runs:
        raise SystemExit(f"{folder}: no finished runs (runs/*/result.json)")
    metric = next(iter(runs[0]["metrics"]))
    groups = cells(runs)
    header = (
        f"| adapter | lr | {metric} ×100 (validation) | dev {metric} ×100 | Δ vs LoRA at the same lr "
        "[95 % CI] | seeds better / equal / worse | seeds |\n|---|---|---|---|---|---|---|"
    )
    lines = [f"Every cell ({len(runs)} finished runs in {folder}); mean ± sample std over seeds:", "", header]
    for (inhibition, rate), members in groups.items():
        lines.append(_row(label(inhibition), rate, members, groups.get((0.0, rate)), metric))
    if pairs:
        lines += [
            "",
            "Pairs (each at its own rate), paired by seed:",
            "",
            header.replace(" at the same lr", ""),
        ]
    for pair in pairs:
        (ratio, rate), (base_ratio, base_rate) = (
            tuple(float(x) for x in side.split("@")) for side in pair.split(":")
        )
        members, lora = groups.get((ratio, rate), []), groups.get((base_ratio, base_rate), [])
        if not members or not lora:
            lines.append(f"| {pair} | — | no runs | | | | |")
            continue
        row = _row(f"{label(ratio)} vs {label(base_ratio)} at {base_rate:g}", rate, members, lora, metric)
        lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--pair", action="append", default=[], help="RATIO@RATE:RATIO@RATE, e.g. 0.9@0.003:0@0.001"
    )
    args = parser.parse_args(argv)
    text = report(args.folder, args.pair)
    write_text(args.folder / "paired.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
