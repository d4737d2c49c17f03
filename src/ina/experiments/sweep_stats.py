"""The statistics of a sweep: choosing each configuration's learning rate on dev, and paired intervals.

A configuration is (activation, rank, ratio); with a learning-rate grid each has several rates. With
``--select_on dev`` the rate with the best mean dev score (over seeds) is kept, and only its runs are
reported, on the validation set that played no part in the choice. Each ratio is compared with LoRA
(ρ = 0, same activation and rank) seed by seed: the mean difference and its 95 % t interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

Record = dict[str, Any]
CONFIDENCE = 0.95


def config_key(record: Record) -> tuple[str, int, float]:
    """(activation, rank, ratio): what a learning rate is chosen for."""
    return (record["activation"], record["r"], record["inhibition"])


def select_on_dev(
    records: Sequence[Record],
) -> tuple[list[Record], dict[tuple[str, int, float], dict[str, Any]]]:
    """The runs of each configuration's best learning rate on dev, and the choices.

    Choice per configuration: ``{"learning_rate": rate, "metric": name, "dev": {rate: mean dev score}}``;
    the score is the first of the runs' ``dev_metrics`` (higher is better), ties go to the smaller rate.
    Runs without dev metrics are reported as they are (nothing to choose on).
    """
    groups: dict[tuple[str, int, float], dict[float | None, list[Record]]] = {}
    for record in records:
        groups.setdefault(config_key(record), {}).setdefault(record.get("learning_rate"), []).append(record)
    kept: list[Record] = []
    choices: dict[tuple[str, int, float], dict[str, Any]] = {}
    for key, by_rate in groups.items():
        scored = {
            rate: [m["dev_metrics"] for m in members if m.get("dev_metrics")]
            for rate, members in by_rate.items()
        }
        metric = next((next(iter(d)) for dev in scored.values() for d in dev), None)
        if metric is None:
            kept += [m for members in by_rate.values() for m in members]
            continue
        means = {rate: statistics.fmean(d[metric] for d in dev) for rate, dev in scored.items() if dev}
        best = max(sorted(means, key=lambda r: (r is None, r or 0.0)), key=lambda rate: means[rate])
        choices[key] = {"learning_rate": best, "metric": metric, "dev": means}
        kept += by_rate[best]
    return kept, choices


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its two-sided t interval (nan bounds below 2 values)."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = statistics.fmean(values)
    if n < 2:
        return (mean, math.nan, math.nan)
    from scipy import stats

    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return (mean, mean - half, mean + half)


def paired_difference(
    records: Sequence[Record], baseline: Sequence[Record], metric: str, scale: float = 1.0
) -> dict[str, Any]:
    """``records`` minus ``baseline`` on ``metric``, paired by seed: ``{"mean", "low", "high", "seeds"}``."""
    base = {r["seed"]: r["metrics"][metric] for r in baseline if metric in r["metrics"]}
    differences = [
        scale * (r["metrics"][metric] - base[r["seed"]])
        for r in records
        if r["seed"] in base and metric in r["metrics"]
    ]
    mean, low, high = t_interval(differences)
    return {"mean": mean, "low": low, "high": high, "seeds": len(differences)}


def interval_text(difference: dict[str, Any]) -> str:
    """``+1.20 [-0.35, +2.75]``; ``—`` without pairs; the bounds left out below two pairs."""
    if not difference["seeds"]:
        return "—"
    text = f"{difference['mean']:+.2f}"
    if math.isnan(difference["low"]):
        return text + " (1 seed)"
    return text + f" [{difference['low']:+.2f}, {difference['high']:+.2f}]"
