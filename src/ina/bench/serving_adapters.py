"""`ina bench serve --adapters 1 8`: throughput of `ina serve` as the number of adapters in use grows.

The server holds ``max(N)`` adapters: copies of the first ``--adapter`` (each loaded as its own adapter),
or demo InA adapters with random non-zero B matrices made on the base (ρ 0.3 and 0.9 alternating). Each
level runs C concurrent streaming clients whose requests cycle through the first N adapters. Levels
alternate (the order of the Ns reverses every round) for ``--repeats`` rounds; the summary gives
medians, the spread of tokens/s, and the ratio of each N's tokens/s to the smallest N's, both of the
medians and round by round. When the benchmark started the server it also reports the server's CPU
time per generated token (read from ``/proc``), which waiting for a busy core does not inflate.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ina.bench.serving import run_level
from ina.bench.settings import ServeBenchSettings
from ina.foundation.errors import UsageError

DEMO_TARGETS = ["q_proj", "v_proj"]
SUMMED = ("requests_per_s", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "latency_p50_ms", "latency_p95_ms")


def make_adapters(
    count: int, base: str, given: dict[str, str], folder: Path, log: Callable[[str], None] = lambda line: None
) -> dict[str, str]:
    """``count`` adapter folders ``adapter1``… under ``folder``: copies of the first of ``given`` (its top-level
    files), or demo InA adapters on ``base`` targeting q_proj and v_proj."""
    from ina.testing import save_demo_adapter

    folder.mkdir(parents=True, exist_ok=True)
    adapters = {}
    source = Path(next(iter(given.values()))) if given else None
    log(
        f"ina bench serve: {count} adapters, "
        + (f"copies of {source}" if source else f"demo InA adapters on {base} ({', '.join(DEMO_TARGETS)})")
    )
    for k in range(1, count + 1):
        out = folder / f"adapter{k}"
        if source is not None:
            out.mkdir()
            for item in source.iterdir():
                if item.is_file():
                    shutil.copy2(item, out / item.name)
        else:
            save_demo_adapter(base, out, inhibition=(0.3, 0.9)[k % 2], seed=k, targets=DEMO_TARGETS)
        adapters[out.name] = str(out)
    return adapters


def _cpu_seconds(process: subprocess.Popen[bytes] | None) -> float | None:
    """User + system CPU time of ``process`` so far (Linux ``/proc``); None where it cannot be read."""
    if process is None:
        return None
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def run_adapter_levels(
    url: str,
    models: list[str],
    settings: ServeBenchSettings,
    process: subprocess.Popen[bytes] | None,
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Every (clients, N) level, alternating, ``settings.repeats`` times; the runs and their summary."""
    counts = sorted(set(settings.adapter_counts))
    adapters = models[1:]  # `ina serve` lists the base first, then its adapters
    if len(adapters) < counts[-1]:
        raise UsageError(
            f"--adapters {counts[-1]}: the server at {url} serves {len(adapters)} adapters ({adapters}); "
            "give at most that many, or let the benchmark start a server (drop --url)"
        )
    asyncio.run(run_level(url, adapters[: counts[-1]], counts[-1], 1, 4, settings.api_key))  # warm-up
    runs = []
    for repeat in range(settings.repeats):
        order = counts if repeat % 2 == 0 else counts[::-1]
        for clients in settings.concurrency:
            for n in order:
                cpu_before = _cpu_seconds(process)
                row = asyncio.run(
                    run_level(
                        url,
                        adapters[:n],
                        clients,
                        settings.requests_per_client,
                        settings.max_tokens,
                        settings.api_key,
                    )
                )
                cpu_after = _cpu_seconds(process)
                row.update(adapters=n, repeat=repeat, load_average=os.getloadavg()[0])
                if cpu_before is not None and cpu_after is not None and row["tokens"]:
                    row["server_cpu_ms_per_token"] = 1000 * (cpu_after - cpu_before) / row["tokens"]
                runs.append(row)
                log(
                    f"  round {repeat + 1}, {clients} clients, {n} adapters: {row['tokens_per_s']:.1f} tokens/s, "
                    f"TTFT p50 {row['ttft_p50_ms']:.0f} ms, load {row['load_average']:.1f}"
                )
    return {
        "models": models,
        "adapters_served": counts[-1],
        "max_tokens": settings.max_tokens,
        "requests_per_client": settings.requests_per_client,
        "repeats": settings.repeats,
        "path": "peft" if settings.peft_path else "server default",
        "summary": summarize(runs, counts, settings.concurrency),
        "runs": runs,
    }


def summarize(runs: list[dict[str, Any]], counts: list[int], concurrency: list[int]) -> list[dict[str, Any]]:
    """One row per (clients, N): medians over rounds, tokens/s min and max, ratios to the smallest N."""
    rows = []
    for clients in concurrency:
        level = {n: [r for r in runs if r["clients"] == clients and r["adapters"] == n] for n in counts}
        reference = level[counts[0]]
        for n in counts:
            mine = level[n]
            row: dict[str, Any] = {"clients": clients, "adapters": n, "rounds": len(mine)}
            for key in SUMMED:
                row[key] = statistics.median(r[key] for r in mine)
            row["tokens_per_s_min"] = min(r["tokens_per_s"] for r in mine)
            row["tokens_per_s_max"] = max(r["tokens_per_s"] for r in mine)
            cpu = [r["server_cpu_ms_per_token"] for r in mine if "server_cpu_ms_per_token" in r]
            row["server_cpu_ms_per_token"] = statistics.median(cpu) if cpu else None
            row["tokens_per_s_vs_first"] = row["tokens_per_s"] / statistics.median(
                r["tokens_per_s"] for r in reference
            )
            paired = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(mine, reference, strict=True)]
            row["paired_ratio_min"], row["paired_ratio_max"] = min(paired), max(paired)
            row["load_average_median"] = statistics.median(r["load_average"] for r in mine)
            rows.append(row)
    return rows


def format_adapters_table(report: dict[str, Any]) -> str:
    """The summary as a Markdown table (what docs/serve.md shows)."""
    first = report["summary"][0]["adapters"] if report["summary"] else 1
    lines = [
        f"{report['adapters_served']} adapters served, max_tokens {report['max_tokens']}, "
        f"{report['requests_per_client']} requests per client, medians of {report['repeats']} alternating rounds"
        + (" (PEFT's per-adapter path)" if report["path"] == "peft" else ""),
        "",
        f"| clients | adapters in use | req/s | tokens/s [min, max] | × N={first} [per-round min, max] "
        "| TTFT p50 | TTFT p95 | latency p50 | latency p95 | server CPU ms/token |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        cpu = r["server_cpu_ms_per_token"]
        lines.append(
            f"| {r['clients']} | {r['adapters']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} "
            f"[{r['tokens_per_s_min']:.1f}, {r['tokens_per_s_max']:.1f}] | {r['tokens_per_s_vs_first']:.3f} "
            f"[{r['paired_ratio_min']:.3f}, {r['paired_ratio_max']:.3f}] | {r['ttft_p50_ms']:.0f} ms "
            f"| {r['ttft_p95_ms']:.0f} ms | {r['latency_p50_ms']:.0f} ms | {r['latency_p95_ms']:.0f} ms "
            f"| {'—' if cpu is None else f'{cpu:.1f}'} |"
        )
    return "\n".join(lines)
