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


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: medians, spreads and ratios against the frozen base."""
    rows = [
        "| variant | trainable | step ms, median [IQR] | × base | × LoRA | CPU ms | × base | × LoRA | peak MiB | × base | saved MiB | × base "
        "| decode ms/token [IQR] | × base | × LoRA | decode CPU ms | × LoRA |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mib = 1 / 2**20
    for name, r in report["variants"].items():
        ratio = report["ratios"][name]
        step = r["step_ms"]
        decode = r["decode_ms_per_token"]
        decode_cpu = r.get("decode_cpu_ms_per_token")
        peak = r["peak_memory_bytes"]
        saved = r["saved_for_backward_bytes"]
        rows.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{r['trainable_parameters']:,}",
                    f"{step['median']:.1f} [{step['q1']:.1f}, {step['q3']:.1f}]" if step else "—",
                    _fmt(ratio["step_vs_base"], ".3f"),
                    _fmt(ratio["step_vs_lora"], ".3f"),
                    f"{r['step_cpu_ms']['median']:.1f}" if r["step_cpu_ms"] else "—",
                    _fmt(ratio["step_cpu_vs_base"], ".3f"),
                    _fmt(ratio["step_cpu_vs_lora"], ".3f"),
                    _fmt(peak * mib if peak else None, ".0f"),
                    _fmt(ratio["peak_memory_vs_base"], ".3f"),
                    _fmt(saved * mib if saved is not None else None, ".1f"),
                    _fmt(ratio["saved_for_backward_vs_base"], ".3f"),
                    f"{decode['median']:.2f} [{decode['q1']:.2f}, {decode['q3']:.2f}]" if decode else "—",
                    _fmt(ratio["decode_vs_base"], ".3f"),
                    _fmt(ratio.get("decode_vs_lora"), ".3f"),
                    f"{decode_cpu['median']:.2f}" if decode_cpu else "—",
                    _fmt(ratio.get("decode_cpu_vs_lora"), ".3f"),
                ]
            )
            + " |"
        )
    notes = [f"- {name}: {r['note']}" for name, r in report["variants"].items() if r["note"]]
    return "\n".join(rows + notes)


def format_serving_table(report: dict[str, Any]) -> str:
    """The serving benchmark as a fixed-width table: one row per number of concurrent clients."""
    lines = [
        f"models {report['models']}, max_tokens {report['max_tokens']}, "
        f"{report['requests_per_client']} requests per client",
        f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} {'latency p50':>11}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:>7.2f} {r['tokens_per_s']:>7.1f} "
            f"{r['ttft_p50_ms']:>7.0f}ms {r['ttft_p95_ms']:>7.0f}ms {r['latency_p50_ms']:>9.0f}ms"
        )
    return "\n".join(lines)


def write_report(data: Any, path: str | Path) -> Path:
    """Write a benchmark's results as JSON to ``path`` atomically (both benchmarks' ``--json``)."""
    return write_json(path, data)
