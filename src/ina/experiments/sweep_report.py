"""What `ina sweep` writes after its grid: ``results.csv``, ``results.md`` and ``results.png``.

``results.csv`` has one row per run; ``results.md`` the mean ± sample standard deviation per
configuration (LoRA first, the best mean of each column in bold), each ratio's paired difference from
LoRA with its 95 % interval, and a verdict; ``results.png`` the metrics against the inhibition ratio
and, when runs recorded them, the validation curves (`ina.experiments.sweep_plot`).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ina.experiments.sweep_stats import interval_text, paired_difference, select_on_dev
from ina.foundation.files import write_text

# GLUE metrics are fractions, reported ×100 like the paper; SQuAD's are already percentages.
PERCENT_SCALE = {"glue": 100.0, "squad": 1.0}


def label(inhibition: float) -> str:
    """``ρ = 0`` is LoRA; other ratios are InA."""
    return "LoRA (ρ=0)" if inhibition == 0 else f"InA ρ={inhibition:g}"


def summarise(records: Sequence[dict[str, Any]], experiment: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Metric names and one row per configuration (and learning rate): mean and std (sample, n-1) per
    metric, the runs (``members``) and the paired difference from LoRA on the first metric; LoRA first."""
    scale = PERCENT_SCALE.get(experiment, 1.0)
    metric_names = list(dict.fromkeys(name for record in records for name in record["metrics"]))
    groups: dict[tuple[str, int, float, float], list[dict[str, Any]]] = {}
    for record in records:
        key = (record["activation"], record["r"], record["inhibition"], record.get("learning_rate") or 0.0)
        groups.setdefault(key, []).append(record)
    rows = []
    for (activation, r, inhibition, rate), members in sorted(
        groups.items(), key=lambda item: (item[0][2] != 0, item[0])
    ):
        row: dict[str, Any] = {
            "inhibition": inhibition,
            "activation": activation,
            "r": r,
            "learning_rate": rate or None,
            "runs": len(members),
            "members": members,
        }
        for name in metric_names:
            values = [scale * m["metrics"][name] for m in members if name in m["metrics"]]
            row[name] = (
                statistics.fmean(values) if values else math.nan,
                statistics.stdev(values) if len(values) > 1 else math.nan,
            )
        rows.append(row)
    for row in rows:
        row["difference"] = None
        lora = _lora_for(row, rows)
        if metric_names and lora is not None and row is not lora:
            row["difference"] = paired_difference(row["members"], lora["members"], metric_names[0], scale)
    return metric_names, rows


def _lora_for(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The LoRA row to compare ``row`` with: same activation and rank, the same learning rate when there
    is one such row, else the only LoRA row of that activation and rank (its rate chosen on dev)."""
    candidates = [
        other
        for other in rows
        if other["inhibition"] == 0 and (other["activation"], other["r"]) == (row["activation"], row["r"])
    ]
    same = [other for other in candidates if other["learning_rate"] == row["learning_rate"]]
    if same:
        return same[0]
    return candidates[0] if len(candidates) == 1 else None


def markdown_table(metric_names: list[str], rows: list[dict[str, Any]], rate_label: str = "lr") -> str:
    """The table of `summarise`, best mean of each metric in bold (every metric: higher is better), the
    learning rate when rows differ in it, and each ratio's paired difference from LoRA when there is one."""
    vary_activation = len({row["activation"] for row in rows}) > 1
    vary_r = len({row["r"] for row in rows}) > 1
    vary_rate = len({row["learning_rate"] for row in rows}) > 1 or rate_label != "lr"
    compare = any(row.get("difference") for row in rows)
    delta = f"Δ {metric_names[0]} vs LoRA [95 % CI]" if metric_names else ""
    header = [
        "adapter",
        *(["activation"] if vary_activation else []),
        *(["r"] if vary_r else []),
        *([rate_label] if vary_rate else []),
        *metric_names,
        *([delta] if compare else []),
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
        cells += [f"{row['learning_rate']:g}" if row["learning_rate"] else "default"] if vary_rate else []
        for name in metric_names:
            mean, std = row[name]
            text = f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")
            cells.append(f"**{text}**" if mean == best[name] else text)
        if compare:
            cells.append(interval_text(row["difference"]) if row.get("difference") else "—")
        cells.append(str(row["runs"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def significance(metric_names: list[str], rows: list[dict[str, Any]]) -> str:
    """One sentence from the paired 95 % intervals: which ratios differ from LoRA beyond noise."""
    compared = [row for row in rows if row.get("difference") and not math.isnan(row["difference"]["low"])]
    if not metric_names or not compared:
        return "No paired interval (a ratio and LoRA need two common seeds)."
    better = [row for row in compared if row["difference"]["low"] > 0]
    worse = [row for row in compared if row["difference"]["high"] < 0]

    def names(group: list[dict[str, Any]]) -> str:
        return ", ".join(_config_label(row) for row in group)

    parts = []
    if better:
        parts.append(f"better than LoRA beyond noise: {names(better)}")
    if worse:
        parts.append(f"worse than LoRA beyond noise: {names(worse)}")
    tied = [row for row in compared if row not in better and row not in worse]
    if tied:
        parts.append(f"within noise of LoRA (the interval holds 0): {names(tied)}")
    return f"Paired by seed, 95 % t interval of the {metric_names[0]} difference: " + "; ".join(parts) + "."


def _config_label(row: dict[str, Any]) -> str:
    rate = f", lr {row['learning_rate']:g}" if row["learning_rate"] else ""
    return f"{label(row['inhibition'])} ({row['activation']}, r={row['r']}{rate})"


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


def one_class_warning(records: Sequence[dict[str, Any]]) -> str:
    """A warning when runs predicted one class for every validation example (``predicted_classes`` in their
    record, from `ina glue`): their score is the majority-class rate, and they learnt nothing; "" otherwise."""
    single = [r for r in records if len(r.get("predicted_classes") or {}) == 1]
    if not single:
        return ""
    fix = "train longer or at a higher --learning_rate (see docs/experiments.md on ρ = 0.9)"
    classes = sorted({next(iter(r["predicted_classes"])) for r in single})
    if len(single) == len(records):
        return (
            f"**Warning: every run of this sweep ({len(records)}) predicts one class ({', '.join(classes)}) for every "
            f"validation example**: the scores below are the majority-class rate and compare nothing; {fix}."
        )
    groups: dict[str, list[str]] = {}
    for record in single:
        config = {"inhibition": record["inhibition"], "activation": record["activation"], "r": record["r"]}
        rate = record.get("learning_rate")
        name = _config_label({**config, "learning_rate": rate})
        groups.setdefault(name, []).append(f"seed {record.get('seed')}")
    listed = "; ".join(f"{name}: {', '.join(seeds)}" for name, seeds in groups.items())
    return (
        f"**Warning: {len(single)} of {len(records)} runs predict one class ({', '.join(classes)}) for every "
        f"validation example** ({listed}): their scores are the majority-class rate; {fix}."
    )


def write_summaries(
    root: Path, records: Sequence[dict[str, Any]], experiment: str, select_on: str = "none"
) -> None:
    """``results.csv`` (every run), ``results.md`` and ``results.png`` (with ``select_on="dev"``: each
    configuration at its learning rate best on dev) in ``root``, each written atomically."""
    from ina.experiments.sweep_plot import plot

    write_text(root / "results.csv", _csv(records, experiment))
    chosen, choices = select_on_dev(records) if select_on == "dev" else (list(records), {})
    metric_names, rows = summarise(chosen, experiment)
    task = next((r.get("task") for r in records if r.get("task")), experiment)
    scale = " (×100)" if PERCENT_SCALE.get(experiment, 1.0) != 1.0 else ""
    intro = f"Mean ± sample std over seeds{scale}; best mean per column in **bold**; ρ = 0 is plain LoRA."
    if choices:
        metric = next(iter(choices.values()))["metric"]
        intro += (
            f" Each configuration uses the learning rate with the best mean dev {metric} (dev: held out of "
            "the training data); the scores are on the validation set, which played no part in the choice."
        )
    warning = one_class_warning(records)
    text = (
        f"# {experiment} sweep: {task}\n\n"
        + (f"{warning}\n\n" if warning else "")
        + f"{intro}\n\n"
        + markdown_table(metric_names, rows, "lr (chosen on dev)" if choices else "lr")
        + "\n"
        + verdict(metric_names, rows)
        + "\n\n"
        + significance(metric_names, rows)
        + "\n"
        + (_choices_table(choices) if choices else "")
    )
    write_text(root / "results.md", text)
    plot(root / "results.png", metric_names, rows, experiment, str(task))


def _csv(records: Sequence[dict[str, Any]], experiment: str) -> str:
    metric_names = list(dict.fromkeys(name for record in records for name in record["metrics"]))
    dev_names = list(dict.fromkeys(n for record in records for n in record.get("dev_metrics") or {}))
    fields = [
        *("run", "experiment", "task", "inhibition", "activation", "r", "learning_rate", "seed"),
        *metric_names,
        *(f"dev/{name}" for name in dev_names),
        *("train_seconds", "train_samples", "steps"),
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        dev = {f"dev/{k}": v for k, v in (record.get("dev_metrics") or {}).items()}
        writer.writerow({**record, **record["metrics"], **dev})
    return buffer.getvalue()


def _choices_table(choices: dict[tuple[str, int, float], dict[str, Any]]) -> str:
    """Mean dev score of every learning rate per configuration, the chosen one in bold."""
    rates = sorted({rate for choice in choices.values() for rate in choice["dev"] if rate is not None})
    metric = next(iter(choices.values()))["metric"]
    lines = [
        f"\nMean dev {metric} per learning rate (the chosen one in bold):\n",
        "| adapter | activation | r | " + " | ".join(f"lr {rate:g}" for rate in rates) + " |",
        "|" + "---|" * (3 + len(rates)),
    ]
    for (activation, r, inhibition), choice in sorted(choices.items(), key=lambda i: (i[0][2] != 0, i[0])):
        cells = []
        for rate in rates:
            value = choice["dev"].get(rate)
            text = "—" if value is None else f"{value:.4g}"
            cells.append(f"**{text}**" if rate == choice["learning_rate"] else text)
        lines.append(f"| {label(inhibition)} | {activation} | {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
