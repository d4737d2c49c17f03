"""`ina bench` (training steps of the base, LoRA and InA) and `ina bench serve` (load on `ina serve`).

The flags come from the settings dataclasses (`ina.bench.settings`); parsing imports no framework.
Printing happens here; the benchmarks report through a ``log`` callback and return their results.
"""

from __future__ import annotations

import argparse
import sys

from ina.bench.settings import BenchSettings, ServeBenchSettings
from ina.foundation.arguments import add_arguments, from_namespace

SERVE_DESCRIPTION = (
    "Benchmark `ina serve`: requests/s and time to first token for 1, 8 and 32 concurrent streaming clients. "
    "Without --url, starts `ina serve` (a child process) on a free loopback port (or --port) and stops it at "
    "the end. "
    "With --adapters N [N ...]: tokens/s, TTFT and latency as the number of adapters in use grows, in "
    "alternating rounds, with the ratio to the smallest N."
)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench` (and its `serve` subcommand) to the `ina` parser."""
    # No abbreviated flags: `ina bench serve --adapter` would be an ambiguous prefix of --adapter_dtype and
    # --adapter-dtype (argparse checks every argument against this parser before `serve` takes them).
    bench = subparsers.add_parser(
        "bench",
        allow_abbrev=False,
        description=(
            "Times forward + backward + AdamW steps of the frozen base, PEFT LoRA, InA on the reference path and "
            "InA on the fused path, on the same model, data and settings in one process; variants alternate "
            "every round, warm-up rounds are excluded; prints medians, spreads and ratios to the base, and "
            "writes JSON with --json. A benchmark, not a test: on a shared machine, repeat it. "
            "`ina bench serve --help`: the serving benchmark."
        ),
    )
    add_arguments(bench, BenchSettings, given_only=False, kebab_aliases=True)
    bench.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON here")
    bench.set_defaults(handler=_bench)
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="serve", title="the serving benchmark")
    serve = benchmarks.add_parser(
        "serve",
        help="requests/s and time to first token of `ina serve` (see `ina bench serve --help`)",
        description=SERVE_DESCRIPTION,
    )
    _add_serve_flags(serve)
    serve.set_defaults(handler=_serve)


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, ServeBenchSettings, given_only=False, required_groups={"server"})
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def _bench(args: argparse.Namespace) -> int:
    from ina.bench.report import format_table, write_report
    from ina.bench.training import run_bench
    from ina.foundation.errors import UsageError
    from ina.foundation.files import output_problem

    if problem := output_problem(args.json, "--json"):  # before minutes of benchmarking, not after
        raise UsageError(problem)
    report = run_bench(from_namespace(BenchSettings, args), log=_log)
    print(format_table(report))
    if args.json:
        write_report(report, args.json)
        _log(f"wrote {args.json}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ina.bench.report import format_serving_table, write_report
    from ina.bench.serving import ServerStartError, run_serve_bench

    try:
        report = run_serve_bench(from_namespace(ServeBenchSettings, args), log=_log)
    except ServerStartError as error:
        _log(f"ina bench serve: {error}")
        return 1
    if "summary" in report:  # --adapters: the whole report (every run and the summary)
        from ina.bench.serving_adapters import format_adapters_table

        print(format_adapters_table(report))
    else:
        print(format_serving_table(report))
    if args.json:
        write_report(report.get("rows", report), args.json)
    return 0
