"""`ina glue`, `ina squad` and `ina sweep`: the paper's experiments on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXPERIMENTS = ("glue", "squad")


def _add_experiment_arguments(parser: argparse.ArgumentParser, experiment: str) -> None:
    from ina.experiments.common import add_adapter_arguments, add_runtime_arguments

    if experiment == "glue":
        from ina.experiments.glue import add_arguments
    else:
        from ina.experiments.squad import add_arguments
    add_arguments(parser)
    add_adapter_arguments(parser)
    add_runtime_arguments(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the experiment subcommands to the `ina` parser."""
    glue = subparsers.add_parser(
        "glue",
        allow_abbrev=False,  # flags pass through to TrainingArguments: --seed must not be read as --seeds
        help="fine-tune an InA adapter on a GLUE task (offline default: MiniLM on vader movie reviews)",
        description="Sequence classification (STS-B: regression) with an InA adapter and the HF Trainer, flags as "
        "in Hugging Face's run_glue.py. Any transformers.TrainingArguments flag (e.g. --num_train_epochs 3 "
        "--seed 1) is passed through.",
    )
    _add_experiment_arguments(glue, "glue")
    glue.set_defaults(handler=_handler("glue"), accepts_extra_args=True)

    squad = subparsers.add_parser(
        "squad",
        allow_abbrev=False,  # flags pass through to TrainingArguments: --seed must not be read as --seeds
        help="fine-tune an InA adapter for extractive QA on SQuAD v1/v2 JSON (offline default: a synthetic set)",
        description="Extractive question answering with an InA adapter and the HF Trainer, flags as in Hugging "
        "Face's run_qa.py; official SQuAD v2 exact match and F1. Any TrainingArguments flag is passed through.",
    )
    _add_experiment_arguments(squad, "squad")
    squad.set_defaults(handler=_handler("squad"), accepts_extra_args=True)

    sweep = subparsers.add_parser(
        "sweep",
        allow_abbrev=False,  # flags pass through to TrainingArguments: --seed must not be read as --seeds
        help="run glue or squad over inhibition ratios × seeds; writes results.csv/.md/.png (resumable)",
        description="Every other flag goes to the experiment (e.g. --task_name rte --model_name_or_path M). Finished "
        "runs (runs/NAME/result.json) are skipped, so an interrupted sweep continues where it stopped.",
    )
    sweep.add_argument(
        "--experiment", choices=EXPERIMENTS, default="glue", help="which experiment to sweep (default glue)"
    )
    sweep.add_argument(
        "--inhibition",
        default="0,0.1,0.3,0.9",
        help="comma-separated ratios; 0 is LoRA (default 0,0.1,0.3,0.9)",
    )
    sweep.add_argument("--seeds", default="1,2,3", help="comma-separated training seeds (default 1,2,3)")
    sweep.add_argument(
        "--activation", default="leaky_relu", help="comma-separated gate activations (default leaky_relu)"
    )
    sweep.add_argument("--lora_r", default="4", help="comma-separated ranks (default 4)")
    sweep.add_argument("--output_dir", default=None, help="sweep folder (default outputs/sweep-EXPERIMENT)")
    sweep.set_defaults(handler=_sweep, accepts_extra_args=True)


def _handler(experiment: str) -> Any:
    def handle(args: argparse.Namespace, extra: list[str]) -> int:
        from ina.experiments.common import ExperimentError

        try:
            record = _run(experiment, args, extra)
        except ExperimentError as error:
            print(f"ina {experiment}: error: {error}", file=sys.stderr)
            return 2
        print(json.dumps(record["metrics"], indent=2))
        return 0

    return handle


def _run(experiment: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    if experiment == "glue":
        from ina.experiments.glue import run
    else:
        from ina.experiments.squad import run
    return run(args, extra)


def _sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from ina.experiments.common import ExperimentError
    from ina.experiments.sweep import run_sweep

    parser = argparse.ArgumentParser(prog=f"ina sweep --experiment {args.experiment}", allow_abbrev=False)
    _add_experiment_arguments(parser, args.experiment)

    def run_one(argv: list[str]) -> dict[str, Any]:
        run_args, run_extra = parser.parse_known_args(argv)
        return _run(args.experiment, run_args, run_extra)

    args.output_dir = args.output_dir or f"outputs/sweep-{args.experiment}"
    try:
        run_sweep(args, extra, run_one)
    except ExperimentError as error:
        print(f"ina sweep: error: {error}", file=sys.stderr)
        return 2
    print(Path(args.output_dir, "results.md").read_text())
    return 0
