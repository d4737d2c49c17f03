"""The results of `ina eval` as a table: one row per task and metric, one column per model (base first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ina.foundation.files import write_json, write_text

RESULTS_JSON = "eval_results.json"
RESULTS_MD = "eval_results.md"
# lm-eval's metric keys (kept as they are in eval_results.json) → the names the printed table uses
METRIC_NAMES = {
    "acc": "accuracy",
    "acc_norm": "accuracy (length-normalised)",
    "byte_perplexity": "byte perplexity",
    "bits_per_byte": "bits per byte",
    "word_perplexity": "word perplexity",
    "exact_match": "exact match",
    "mcc": "Matthews correlation",
    "f1": "F1",
}


def metric_name(key: str) -> str:
    """The printed name of an lm-eval metric key: ``acc`` → ``accuracy``, ``bits_per_byte`` → ``bits per
    byte``, ``exact_match (strict-match)`` → ``exact match (strict-match)``; other keys with spaces for ``_``."""
    metric, space, rest = key.partition(" ")
    return METRIC_NAMES.get(metric, metric.replace("_", " ")) + space + rest


def _cell(entry: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    text = f"{entry['value']:.4f}"
    if entry.get("stderr") is not None:
        text += f" ± {entry['stderr']:.4f}"
    if base is not None and entry is not base:
        text += f" ({entry['value'] - base['value']:+.4f})"
    return text


def markdown_table(results: dict[str, Any]) -> str:
    """The Markdown table: value ± standard error, and each adapter's difference from the base."""
    models = list(results["results"])
    rows: list[tuple[str, str]] = []
    for scores in results["results"].values():
        for task, metrics in scores.items():
            rows += [(task, metric) for metric in metrics if (task, metric) not in rows]
    header = ["task", "metric", "n", *[m if i else f"{m} (no adapter)" for i, m in enumerate(models)]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, metric in rows:
        entries = [results["results"][m].get(task, {}).get(metric) for m in models]
        first = next((e for e in entries if e is not None), {})
        better = first.get("higher_is_better")
        arrow = " ↑" if better is True else " ↓" if better is False else ""
        base = entries[0]
        cells = [_cell(entry, base) for entry in entries]
        lines.append(
            f"| {task} | {metric_name(metric)}{arrow} | {first.get('samples') or ''} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def describe(results: dict[str, Any]) -> str:
    """The table with a line saying what was run (model, adapters, settings)."""
    settings = results["settings"]
    adapters = ", ".join(f"{name} = {path}" for name, path in results["adapters"].items()) or "none"
    lines = [
        f"Base model: {results['base_model']}; adapters: {adapters}.",
        f"lm-eval {settings['lm_eval_version']}, chat template {'on' if settings['apply_chat_template'] else 'off'}, "
        f"{settings['num_fewshot'] if settings['num_fewshot'] is not None else 'task default'} few-shot, "
        f"limit {settings['limit'] or 'none'}, {settings['dtype']} on {settings['device']}; "
        "value ± standard error (difference from the base in brackets); ↑ higher is better, ↓ lower is better.",
        "",
        markdown_table(results),
        "",
    ]
    return "\n".join(lines)


def write_results(results: dict[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """``eval_results.json`` and ``eval_results.md`` in ``output_dir``, each written atomically."""
    folder = Path(output_dir)
    return write_json(folder / RESULTS_JSON, results), write_text(folder / RESULTS_MD, describe(results))
