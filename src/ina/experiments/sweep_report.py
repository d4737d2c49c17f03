"""What `ina sweep` writes after its grid: ``results.csv``, ``results.md`` and ``results.png``.

``results.csv`` has one row per run; ``results.md`` the mean ± sample standard deviation per
configuration (LoRA first, the best mean of each column in bold) and a one-sentence verdict;
``results.png`` the first metric against the inhibition ratio, seeds as dots.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ina.foundation.charts import errorbar_chart
from ina.foundation.files import write_text

# GLUE metrics are fractions, reported ×100 like the paper; SQuAD's are already percentages.
PERCENT_SCALE = {"glue": 100.0, "squad": 1.0}


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
            row[name] = (
                statistics.fmean(values) if values else math.nan,
                statistics.stdev(values) if len(values) > 1 else math.nan,
            )
        rows.append(row)
    return metric_names, rows


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
    if not metric_names:
        return
    name = metric_names[0]
    scale = PERCENT_SCALE.get(experiment, 1.0)
    series = []
    for activation, r in dict.fromkeys((row["activation"], row["r"]) for row in rows):
        members = [row for row in rows if (row["activation"], row["r"]) == (activation, r)]
        seeds = [
            rec
            for rec in records
            if (rec["activation"], rec["r"]) == (activation, r) and name in rec["metrics"]
        ]
        series.append(
            {
                "label": f"{activation}, r={r}",
                "x": [row["inhibition"] for row in members],
                "y": [row[name][0] for row in members],
                "yerr": [0.0 if math.isnan(row[name][1]) else row[name][1] for row in members],
                "points": [(rec["inhibition"], scale * rec["metrics"][name]) for rec in seeds],
            }
        )
    errorbar_chart(
        series,
        path,
        xlabel="inhibition ratio ρ (0 = LoRA)",
        ylabel=name + (" ×100" if scale != 1.0 else ""),
        title=f"{experiment} {task}: InA vs LoRA (mean ± std over seeds)",
    )
