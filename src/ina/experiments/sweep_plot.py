"""``results.png`` of a sweep: each reported metric against the inhibition ratio (the validation
metric, then one panel per ``--test_file``), and, when the runs recorded validation during training
(``--eval_steps``), the first metric against the step per configuration, mean ± std over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ina.experiments.sweep_report import PERCENT_SCALE
from ina.foundation.charts import pyplot, save_figure


def panel_metrics(metric_names: Sequence[str]) -> list[str]:
    """The first validation metric and the first metric of each test set (``NAME/METRIC``)."""
    chosen = [name for name in metric_names if "/" not in name][:1]
    seen: set[str] = set()
    for name in metric_names:
        prefix = name.split("/", 1)[0]
        if "/" in name and prefix not in seen:
            seen.add(prefix)
            chosen.append(name)
    return chosen


def curve_series(rows: Sequence[dict[str, Any]], metric: str, scale: float) -> list[dict[str, Any]]:
    """Per row with curves: ``{"label", "steps", "mean", "std"}`` of ``metric`` over its seeds."""
    series = []
    for row in rows:
        by_step: dict[int, list[float]] = {}
        for record in row["members"]:
            for point in record.get("curve") or []:
                if metric in point:
                    by_step.setdefault(int(point["step"]), []).append(scale * point[metric])
        if by_step:
            steps = sorted(by_step)
            series.append(
                {
                    "label": _row_label(row, rows),
                    "steps": steps,
                    "mean": [statistics.fmean(by_step[s]) for s in steps],
                    "std": [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps],
                }
            )
    return series


def _row_label(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    text = "LoRA (ρ=0)" if row["inhibition"] == 0 else f"ρ={row['inhibition']:g}"
    if len({(r["activation"], r["r"]) for r in rows}) > 1:
        text += f", {row['activation']}, r={row['r']}"
    if row.get("learning_rate") and len({r.get("learning_rate") for r in rows}) > 1:
        text += f", lr {row['learning_rate']:g}"
    return text


def plot(
    path: Path, metric_names: list[str], rows: list[dict[str, Any]], experiment: str, task: str
) -> Path | None:
    """Draw the panels into ``path`` (PNG, atomically); nothing when there are no metrics."""
    panels = panel_metrics(metric_names)
    if not panels:
        return None
    scale = PERCENT_SCALE.get(experiment, 1.0)
    suffix = " ×100" if scale != 1.0 else ""
    curves = curve_series(rows, metric_names[0], scale)
    plt = pyplot()
    count = len(panels) + (1 if curves else 0)
    figure, axes = plt.subplots(1, count, figsize=(6 * count, 4.2), layout="constrained", squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for axis, name in zip(axes[0], panels, strict=False):
        groups = dict.fromkeys((row["activation"], row["r"], row.get("learning_rate")) for row in rows)
        for i, group in enumerate(groups):
            members = [r for r in rows if (r["activation"], r["r"], r.get("learning_rate")) == group]
            colour = colours[i % len(colours)]
            xs = [row["inhibition"] for row in members]
            ys = [row[name][0] for row in members]
            errors = [0.0 if math.isnan(row[name][1]) else row[name][1] for row in members]
            rate = f", lr {group[2]:g}" if group[2] and len({g[2] for g in groups}) > 1 else ""
            axis.errorbar(
                xs,
                ys,
                yerr=errors,
                marker="o",
                capsize=4,
                color=colour,
                label=f"{group[0]}, r={group[1]}{rate}",
            )
            dots = [
                (row["inhibition"], scale * rec["metrics"][name])
                for row in members
                for rec in row["members"]
                if name in rec["metrics"]
            ]
            if dots:
                axis.scatter(*zip(*dots, strict=True), s=12, alpha=0.4, color=colour)
        where = "validation" if "/" not in name else f"test set {name.split('/', 1)[0]}"
        axis.set_xlabel("inhibition ratio ρ (0 = LoRA)")
        axis.set_ylabel(name + suffix)
        axis.set_title(f"{where}: mean ± std over seeds")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if curves:
        axis = axes[0][-1]
        for i, line in enumerate(curves):
            colour = colours[i % len(colours)]
            low = [m - s for m, s in zip(line["mean"], line["std"], strict=True)]
            high = [m + s for m, s in zip(line["mean"], line["std"], strict=True)]
            axis.plot(
                line["steps"], line["mean"], marker="o", markersize=3, color=colour, label=line["label"]
            )
            axis.fill_between(line["steps"], low, high, color=colour, alpha=0.2)
        axis.set_xlabel("training step")
        axis.set_ylabel(f"validation {metric_names[0]}{suffix}")
        axis.set_title("during training: mean ± std over seeds")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{experiment} {task}: InA vs LoRA")
    return save_figure(figure, path, dpi=110)
