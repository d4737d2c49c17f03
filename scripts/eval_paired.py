#!/usr/bin/env python
"""`ina eval` with paired intervals: each adapter minus the base, example by example.

    .venv/bin/python scripts/eval_paired.py --adapter ina=outputs/ina-finetune-smollm2 \
        --output_dir outputs/science/eval-full --torch_threads 1

Takes exactly the flags of `ina eval` and runs `ina eval` itself (``ina.cli.main``); the only change is
that lm-eval is asked to keep its per-example records (``log_samples=True``, which changes no score).
Besides `ina eval`'s ``eval_results.md`` / ``.json`` it writes, in ``--output_dir``:

- ``samples.json``: per model, task and example, the score (accuracy 0/1; for log-likelihood tasks the
  answer's log-likelihood and its UTF-8 bytes);
- ``paired.md`` / ``paired.json``: per adapter and task, the difference from the base on the same
  examples with a 95 % interval. Accuracy: the mean of the per-example differences (each -1, 0 or +1)
  and its t interval, with the counts of examples only the adapter / only the base got right.
  Bits per byte and byte perplexity (corpus-level, as lm-eval aggregates them: total log-likelihood
  over total bytes): a paired bootstrap over examples (10,000 resamples, seed 0, percentile interval).

A research script, not part of the package: `ina eval` reports each model's standard error, not the
paired one, and has no flag to keep lm-eval's samples.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

RESAMPLES = 10_000


def _output_dir(argv: list[str]) -> Path:
    for index, token in enumerate(argv):
        if token == "--output_dir" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if token.startswith("--output_dir="):
            return Path(token.split("=", 1)[1])
    from ina.evaluate.cli import DEFAULT_OUTPUT

    return Path(DEFAULT_OUTPUT)


def run_ina_eval(argv: list[str]) -> tuple[int, list[dict[str, Any]]]:
    """`ina eval ARGV` with lm-eval's samples kept; the exit code and each `simple_evaluate` call's samples
    (in the order `ina eval` runs the models: the base, then each adapter)."""
    import lm_eval

    from ina.cli import main

    original = lm_eval.simple_evaluate
    calls: list[dict[str, Any]] = []

    def keeping_samples(*args: Any, **kwargs: Any) -> dict[str, Any]:
        output = original(*args, **{**kwargs, "log_samples": True})
        calls.append(output.pop("samples", {}))
        return output

    lm_eval.simple_evaluate = keeping_samples
    try:
        code = main(["eval", *argv])
    finally:
        lm_eval.simple_evaluate = original
    return code, calls


def per_example(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[int, dict[str, float]]]:
    """``{task: {doc_id: {"acc": 0/1} or {"loglikelihood", "bytes"}}}`` from lm-eval's samples."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for task, records in samples.items():
        for record in records:
            if "acc" in record:
                value = {"acc": float(record["acc"])}
            else:
                loglikelihood, size = record["bits_per_byte"]
                value = {"loglikelihood": float(loglikelihood), "bytes": float(size)}
            table.setdefault(task, {})[int(record["doc_id"])] = value
    return table


def _t_interval(values: np.ndarray) -> tuple[float, float, float]:
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _corpus(loglikelihood: np.ndarray, size: np.ndarray) -> dict[str, float]:
    bits = -loglikelihood.sum() / size.sum() / math.log(2)
    return {"bits_per_byte": float(bits), "byte_perplexity": float(2**bits)}


def paired(base: dict[int, dict[str, float]], adapter: dict[int, dict[str, float]]) -> dict[str, Any]:
    """The adapter minus the base on the examples both scored, with 95 % intervals (see the module doc)."""
    ids = sorted(set(base) & set(adapter))
    if "acc" in base[ids[0]]:
        a = np.array([adapter[i]["acc"] for i in ids])
        b = np.array([base[i]["acc"] for i in ids])
        mean, low, high = _t_interval(a - b)
        return {
            "n": len(ids),
            "metric": "acc",
            "base": float(b.mean()),
            "adapter": float(a.mean()),
            "difference": {"mean": mean, "low": low, "high": high, "interval": "paired t, 95 %"},
            "only_adapter_right": int(((a == 1) & (b == 0)).sum()),
            "only_base_right": int(((a == 0) & (b == 1)).sum()),
        }
    size = np.array([base[i]["bytes"] for i in ids])
    ll_b = np.array([base[i]["loglikelihood"] for i in ids])
    ll_a = np.array([adapter[i]["loglikelihood"] for i in ids])
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(ids), size=(RESAMPLES, len(ids)))
    result: dict[str, Any] = {"n": len(ids), "base": _corpus(ll_b, size), "adapter": _corpus(ll_a, size)}
    for metric in ("bits_per_byte", "byte_perplexity"):
        boot = np.array(
            [_corpus(ll_a[d], size[d])[metric] - _corpus(ll_b[d], size[d])[metric] for d in draws]
        )
        low, high = np.percentile(boot, [2.5, 97.5])
        result[metric] = {
            "mean": result["adapter"][metric] - result["base"][metric],
            "low": float(low),
            "high": float(high),
            "interval": f"paired bootstrap over examples, {RESAMPLES} resamples, percentile 95 %",
        }
    return result


def markdown(report: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| adapter | task | metric | n | base | adapter | difference [95 % CI] | only adapter / only base right |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, tasks in report.items():
        for task, result in tasks.items():
            if result.get("metric") == "acc":
                d = result["difference"]
                lines.append(
                    f"| {name} | {task} | accuracy ↑ | {result['n']} | {result['base']:.3f} | "
                    f"{result['adapter']:.3f} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | "
                    f"{result['only_adapter_right']} / {result['only_base_right']} |"
                )
                continue
            for metric, text in (
                ("byte_perplexity", "byte perplexity ↓"),
                ("bits_per_byte", "bits per byte ↓"),
            ):
                d = result[metric]
                lines.append(
                    f"| {name} | {task} | {text} | {result['n']} | {result['base'][metric]:.3f} | "
                    f"{result['adapter'][metric]:.3f} | {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | — |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from ina.foundation.files import write_json, write_text

    code, calls = run_ina_eval(argv)
    if code:
        return code
    folder = _output_dir(argv)
    results = json.loads((folder / "eval_results.json").read_text())
    models = list(results["results"])  # the base first, then the adapters, as `ina eval` ran them
    tables = {model: per_example(samples) for model, samples in zip(models, calls, strict=True)}
    write_json(folder / "samples.json", tables)
    base = tables[models[0]]
    report = {
        model: {task: paired(base[task], tables[model][task]) for task in base if task in tables[model]}
        for model in models[1:]
    }
    write_json(folder / "paired.json", report)
    write_text(folder / "paired.md", markdown(report))
    print(markdown(report))
    print(f"wrote {folder / 'paired.md'}, {folder / 'paired.json'} and {folder / 'samples.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
