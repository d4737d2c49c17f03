"""Time training steps (and decoding) of a frozen base, PEFT LoRA and InA on one model, in one process.

Every variant (see :mod:`ina.bench.variants`) runs on the same model object, the same batch and the
same settings. A training step is forward + backward + AdamW step + ``zero_grad`` (the base has no
trainable parameters, so it runs forward + backward only; the embeddings' output requires grad in
every variant, so the backward pass always runs through the whole network). Variants alternate every
round, in a rotated order; warm-up rounds are excluded; the median and spread of the measured steps
are reported. Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during a variant's
steps; everywhere, the bytes saved for backward (unique storages, parameters excluded) in one extra step.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ina.bench.models import describe_device
from ina.bench.report import Spread, VariantResult, make_report
from ina.bench.settings import VARIANTS, BenchSettings
from ina.bench.variants import RECOMPILE_LIMIT, Bench
from ina.foundation.models import recompile_limit, resolve_device, torch_threads


def _rotated(names: list[str], round_index: int) -> list[str]:
    k = round_index % len(names)
    return names[k:] + names[:k]


def run_bench(settings: BenchSettings, log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run the benchmark and return its report (settings, environment, per-variant results, ratios).

    Sets torch's CPU threads for the run (see ``BenchSettings.threads``), and with ``compile`` dynamo's
    recompilation limit, and restores both afterwards.
    """
    settings.validate()  # again: the fields may have changed since construction
    threads = settings.threads
    if threads is None and resolve_device(settings.device).type == "cpu":
        threads = 1  # see BenchSettings.threads
    with torch_threads(threads), recompile_limit(RECOMPILE_LIMIT if settings.compile else None):
        return _run(settings, log)


def _run(settings: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    bench = Bench(settings)
    names = [v for v in VARIANTS if v in settings.variants]
    results: dict[str, VariantResult] = {}
    for name in names:
        with bench.variant(name):
            results[name] = VariantResult(name, bench.trainable())
    if settings.compile and "ina-fast" in names:
        results[
            "ina-fast"
        ].note = "under torch.compile the fused path defers to the compiler: same as ina-reference"
    batch, seq = bench.batch_shape()
    log(
        f"ina bench: {settings.model or settings.preset} on {describe_device(bench.device)}, {bench.dtype}, "
        f"batch {batch} × seq {seq}, targets {settings.targets}, r={settings.r}, dropout={settings.lora_dropout}, "
        f"{'compiled' if settings.compile else 'eager'}; {settings.warmup} warm-up + {settings.steps} rounds"
    )
    bench.model.train()
    peaks: dict[str, int] = {}
    for round_index in range(settings.warmup + settings.steps):
        for name in _rotated(names, round_index):
            with bench.variant(name):
                if bench.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(bench.device)
                seconds, cpu_seconds = bench.train_step(name)
                if round_index >= settings.warmup:
                    results[name].step_ms_all.append(seconds * 1000)
                    results[name].step_cpu_ms_all.append(cpu_seconds * 1000)
                    if bench.device.type == "cuda":
                        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(bench.device))
        if round_index == settings.warmup - 1 or (settings.warmup == 0 and round_index == 0):
            log("  warm-up done" if settings.warmup else "  (no warm-up)")
    for name in names:
        results[name].step_ms = Spread.of(results[name].step_ms_all)
        results[name].step_cpu_ms = Spread.of(results[name].step_cpu_ms_all)
        results[name].peak_memory_bytes = peaks.get(name)
        with bench.variant(name):
            results[name].saved_for_backward_bytes = bench.saved_for_backward(name)
    if settings.decode:
        _time_decoding(bench, names, settings, results)
    return make_report(asdict(settings), _environment(settings, bench), results)


def _time_decoding(
    bench: Bench, names: list[str], settings: BenchSettings, results: dict[str, VariantResult]
) -> None:
    bench.model.eval()
    bench.model.config.use_cache = True
    per_token: dict[str, list[float]] = {name: [] for name in names}
    per_token_cpu: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:  # warm-up
            with bench.decoding(name):
                bench.decode_intervals(2)
        for round_index in range(settings.decode_rounds):
            for name in _rotated(names, round_index):
                with bench.decoding(name):
                    wall, cpu = bench.decode_intervals(settings.decode_tokens)
                    per_token[name] += [1000 * t for t in wall]
                    per_token_cpu[name] += [1000 * t for t in cpu]
    for name in names:
        results[name].decode_ms_per_token = Spread.of(per_token[name])
        results[name].decode_cpu_ms_per_token = Spread.of(per_token_cpu[name])


def _environment(settings: BenchSettings, bench: Bench) -> dict[str, Any]:
    batch, seq = bench.batch_shape()
    if bench.device.type == "cuda":
        memory = (
            "torch.cuda.max_memory_allocated per step (max over steps); saved_for_backward: unique storages "
            "kept for backward in one forward, parameters excluded"
        )
    else:
        memory = (
            "saved_for_backward only: unique storages kept for backward in one forward, parameters "
            "excluded (no peak-memory counter on CPU)"
        )
    if settings.compile:
        memory += "; saved_for_backward is measured in eager mode"
    return {
        "device": describe_device(bench.device),
        "dtype": str(bench.dtype).removeprefix("torch."),
        "batch": batch,
        "seq": seq,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "memory_measured": memory,
    }
