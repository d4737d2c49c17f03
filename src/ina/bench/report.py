"""Benchmark reports: medians and spreads, ratios to the frozen base, Markdown tables and the JSON file.

Imports no framework: the training and serving benchmarks hand in plain numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ina.foundation.files import write_json


@dataclass
class Spread:
    """Median and spread of repeated measurements (milliseconds)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        """The median, quartiles and range of ``values``."""
        if len(values) == 1:
            v = values[0]
            return cls(v, v, v, v, v, 1)
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q1, q3, min(values), max(values), len(values))


@dataclass
class VariantResult:
    """One variant's measurements."""

    name: str
    trainable_parameters: int
    step_ms: Spread | None = None
    step_ms_all: list[float] = field(default_factory=list)
    step_cpu_ms: Spread | None = None
    step_cpu_ms_all: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    saved_for_backward_bytes: int | None = None
    decode_ms_per_token: Spread | None = None
    decode_cpu_ms_per_token: Spread | None = None
    note: str = ""


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def make_report(
    settings: dict[str, Any], environment: dict[str, Any], results: dict[str, VariantResult]
) -> dict[str, Any]:
    """The training benchmark's report: its settings, environment, per-variant results and ratios."""
    base = results.get("base")
    lora = results.get("lora")
    ratios: dict[str, dict[str, float | None]] = {}
    for name, r in results.items():
        ratios[name] = {
            "step_vs_base": _ratio(
                r.step_ms and r.step_ms.median, base and base.step_ms and base.step_ms.median
            ),
            "step_vs_lora": _ratio(
                r.step_ms and r.step_ms.median, lora and lora.step_ms and lora.step_ms.median
            ),
            "step_cpu_vs_base": _ratio(
                r.step_cpu_ms and r.step_cpu_ms.median, base and base.step_cpu_ms and base.step_cpu_ms.median
            ),
            "step_cpu_vs_lora": _ratio(
                r.step_cpu_ms and r.step_cpu_ms.median, lora and lora.step_cpu_ms and lora.step_cpu_ms.median
            ),
            "peak_memory_vs_base": _ratio(r.peak_memory_bytes, base and base.peak_memory_bytes),
            "saved_for_backward_vs_base": _ratio(
                r.saved_for_backward_bytes, base and base.saved_for_backward_bytes
            ),
            "decode_vs_base": _ratio(
                r.decode_ms_per_token and r.decode_ms_per_token.median,
                base and base.decode_ms_per_token and base.decode_ms_per_token.median,
            ),
            "decode_vs_lora": _ratio(
                r.decode_ms_per_token and r.decode_ms_per_token.median,
                lora and lora.decode_ms_per_token and lora.decode_ms_per_token.median,
            ),
            "decode_cpu_vs_lora": _ratio(
                r.decode_cpu_ms_per_token and r.decode_cpu_ms_per_token.median,
                lora and lora.decode_cpu_ms_per_token and lora.decode_cpu_ms_per_token.median,
            ),
        }
    return {
        "settings": settings,
        "environment": environment,
        "variants": {name: asdict(r) for name, r in results.items()},
        "ratios": ratios,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _spread_cell(spread: dict[str, float] | None, spec: str) -> str:
    return f"{spread['median']:{spec}} [{spread['q1']:{spec}}, {spread['q3']:{spec}}]" if spread else "—"


def _median_cell(spread: dict[str, float] | None, spec: str) -> str:
    return format(spread["median"], spec) if spread else "—"


def _mib(value: int | None) -> str:
    return _fmt(value / 2**20 if value is not None else None, ".1f")


# (header, cell from a variant's result and its ratios), in the printed order; the peak columns only where a
# peak was measured (CUDA: CPU has no peak-memory counter), the decode columns only with --decode
_STEP_COLUMNS: list[tuple[str, Any]] = [
    ("variant", lambda r, q: r["name"]),
    ("trainable", lambda r, q: f"{r['trainable_parameters']:,}"),
    ("step ms, median [IQR]", lambda r, q: _spread_cell(r["step_ms"], ".1f")),
    ("× base", lambda r, q: _fmt(q["step_vs_base"], ".3f")),
    ("× LoRA", lambda r, q: _fmt(q["step_vs_lora"], ".3f")),
    ("CPU ms", lambda r, q: _median_cell(r["step_cpu_ms"], ".1f")),
    ("× base", lambda r, q: _fmt(q["step_cpu_vs_base"], ".3f")),
    ("× LoRA", lambda r, q: _fmt(q["step_cpu_vs_lora"], ".3f")),
]
_PEAK_COLUMNS: list[tuple[str, Any]] = [
    (
        "peak MiB",
        lambda r, q: _fmt(r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] else None, ".0f"),
    ),
    ("× base", lambda r, q: _fmt(q["peak_memory_vs_base"], ".3f")),
]
_SAVED_COLUMNS: list[tuple[str, Any]] = [
    ("saved MiB", lambda r, q: _mib(r["saved_for_backward_bytes"])),
    ("× base", lambda r, q: _fmt(q["saved_for_backward_vs_base"], ".3f")),
]
_DECODE_COLUMNS: list[tuple[str, Any]] = [
    ("decode ms/token [IQR]", lambda r, q: _spread_cell(r["decode_ms_per_token"], ".2f")),
    ("× base", lambda r, q: _fmt(q["decode_vs_base"], ".3f")),
    ("× LoRA", lambda r, q: _fmt(q.get("decode_vs_lora"), ".3f")),
    ("decode CPU ms", lambda r, q: _median_cell(r.get("decode_cpu_ms_per_token"), ".2f")),
    ("× LoRA", lambda r, q: _fmt(q.get("decode_cpu_vs_lora"), ".3f")),
]
NO_PEAK_NOTE = (
    "- no peak-memory columns: there is no peak counter on CPU (CUDA's max_memory_allocated); "
    "saved MiB is what autograd keeps for backward"
)


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: medians, spreads and ratios against the frozen base (and PEFT LoRA).

    Only the columns that were measured: peak memory on CUDA, decoding with ``--decode``."""
    variants = report["variants"].values()
    peak = any(r["peak_memory_bytes"] for r in variants)
    decode = any(r["decode_ms_per_token"] for r in variants)
    columns = _STEP_COLUMNS + (_PEAK_COLUMNS if peak else []) + _SAVED_COLUMNS
    columns += _DECODE_COLUMNS if decode else []
    rows = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    for name, r in report["variants"].items():
        ratios = report["ratios"][name]
        rows.append("| " + " | ".join(cell(r, ratios) for _, cell in columns) + " |")
    notes = [f"- {name}: {r['note']}" for name, r in report["variants"].items() if r["note"]]
    if not peak:
        notes.append(NO_PEAK_NOTE)
    return "\n".join(rows + notes)


SERVING_HEADER = ("clients", "requests", "req/s", "tok/s", "TTFT p50", "TTFT p95", "latency p50")


def format_serving_table(report: dict[str, Any]) -> str:
    """The serving benchmark: a line saying what ran, then a Markdown table, one row per number of clients."""
    lines = [
        f"models {report['models']}, max_tokens {report['max_tokens']}, "
        f"{report['requests_per_client']} requests per client",
        "",
        "| " + " | ".join(SERVING_HEADER) + " |",
        "|" + "---|" * len(SERVING_HEADER),
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} "
            f"| {r['ttft_p50_ms']:.0f} ms | {r['ttft_p95_ms']:.0f} ms | {r['latency_p50_ms']:.0f} ms |"
        )
    return "\n".join(lines)


def write_report(data: Any, path: str | Path) -> Path:
    """Write a benchmark's results as JSON to ``path`` atomically (both benchmarks' ``--json``)."""
    return write_json(path, data)
