"""`ina glue`, `ina squad` and `ina sweep`: the paper's experiments on the command line.

Parsers are built from the option dataclasses (`ina.experiments.arguments`) without importing a
framework; the recipes are imported when a command runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from ina.experiments.arguments import SweepArguments, add_options, parse_experiment, parse_sweep
from ina.foundation.arguments import add_arguments
from ina.foundation.errors import Parser, UsageError, one_line
from ina.foundation.trainer_arguments import training_arguments

CONFIG_NOTE = (
    " A YAML or JSON file of these options (and TrainingArguments fields) may come first: ina {} run.yaml."
)
# Command -> description; every flag not listed in --help goes to TrainingArguments.
EXPERIMENT_TEXTS: dict[str, str] = {
    "glue": (
        "Sequence classification (STS-B: regression) with an InA adapter and the HF Trainer, flags as in Hugging "
        "Face's run_glue.py. Any transformers.TrainingArguments flag (e.g. --num_train_epochs 3 --seed 1) is "
        "passed through."
    ),
    "squad": (
        "Extractive question answering with an InA adapter and the HF Trainer, flags as in Hugging Face's "
        "run_qa.py; official SQuAD v2 exact match and F1. Any TrainingArguments flag is passed through."
    ),
}


# What `ina glue` / `ina squad` leave in --output_dir besides the adapter, as their last line says.
WRITTEN = {
    "glue": "the adapter with its classifier head, eval_results.json, trainer_state.json and result.json",
    "squad": "the adapter with its QA head, predictions.json, null_odds.json, eval_results.json and result.json",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the experiment subcommands to the `ina` parser."""
    # allow_abbrev=False: flags pass through to TrainingArguments, so --seed must not be read as --seeds
    for experiment, description in EXPERIMENT_TEXTS.items():
        parser = subparsers.add_parser(
            experiment,
            allow_abbrev=False,
            description=description + CONFIG_NOTE.format(experiment),
        )
        add_options(parser, experiment)
        parser.set_defaults(handler=_handler(experiment), accepts_extra_args=True)

    sweep = subparsers.add_parser(
        "sweep",
        allow_abbrev=False,
        description="Every other flag goes to the experiment (e.g. --task_name rte --model_name_or_path M; "
        "--test_file NAME=PATH, repeatable, scores every adapter on more files; --eval_steps N records "
        "validation curves). Each ratio is compared with LoRA (ρ=0) by a paired 95% t interval over seeds. Finished "
        "runs (runs/NAME/result.json) are skipped, so an interrupted sweep continues where it stopped.",
    )
    add_arguments(sweep, SweepArguments)
    sweep.set_defaults(handler=_sweep, accepts_extra_args=True)


def _handler(experiment: str) -> Any:
    def handle(args: argparse.Namespace, extra: list[str]) -> int:
        try:
            record = _run(experiment, args, extra)
        except UsageError as error:
            print(f"ina {experiment}: error: {one_line(error)}", file=sys.stderr)
            return 2
        print(json.dumps(record["metrics"], indent=2))
        print(f"wrote {WRITTEN[experiment]} to {record['adapter']}")
        return 0

    return handle


def _run(experiment: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    arguments, training_flags = parse_experiment(experiment, args, extra)
    if experiment == "glue":
        from ina.experiments.glue import run
    else:
        from ina.experiments.squad import run
    return run(arguments, training_flags)


def _sweep(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        folder = _run_sweep(args, extra)
    except UsageError as error:
        print(f"ina sweep: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(Path(folder, "results.md").read_text())
    print(
        f"wrote results.csv, results.md, results.png and each run's folder (runs/) to {Path(folder).resolve()}"
    )
    return 0


def _run_sweep(args: argparse.Namespace, extra: list[str]) -> str:
    """Run the sweep; each run's flags are parsed as `ina EXPERIMENT` would parse them. Returns its folder."""
    from ina.experiments.sweep import run_sweep

    arguments = parse_sweep(args)
    parser = Parser(prog="ina sweep", help_command=f"ina {arguments.experiment}", allow_abbrev=False)
    add_options(parser, arguments.experiment)
    # the experiment's flags are checked once before the first run starts (and before anything is written)
    check_args, check_extra = parser.parse_known_args(extra)
    _, training_flags = parse_experiment(arguments.experiment, check_args, check_extra)
    training_arguments(training_flags, arguments.folder, command=f"ina {arguments.experiment}")

    def run_one(argv: list[str]) -> dict[str, Any]:
        run_args, run_extra = parser.parse_known_args(argv)
        return _run(arguments.experiment, run_args, run_extra)

    run_sweep(arguments, extra, run_one, log=functools.partial(print, flush=True))
    return arguments.folder
