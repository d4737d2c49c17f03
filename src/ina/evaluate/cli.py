"""`ina eval`: lm-evaluation-harness on a base causal LM and its InA / LoRA adapters (no framework at import)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ina.foundation.errors import UsageError

if TYPE_CHECKING:
    from ina.evaluate.runner import EvalOptions

OFFLINE_TASKS = (
    "ina_sentiment_en,ina_sentiment_zh,ina_instructions"  # = runner.OFFLINE_TASKS (no import here)
)
DEFAULT_OUTPUT = "outputs/eval"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval` to the `ina` parser."""
    parser = subparsers.add_parser(
        "eval",
        description=(
            "Run lm-evaluation-harness tasks on a base causal LM and on each adapter (InA, the authors' format or "
            "LoRA), and print a table base vs adapters (also written as eval_results.md and .json). Offline, "
            f"ina's own tasks run on held-out embedded data: {OFFLINE_TASKS.replace(',', ', ')}."
        ),
    )
    parser.add_argument(
        "--base_model",
        default="",
        help="model folder or hub name (default: the base recorded in the first adapter, else the embedded SmolLM2)",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an adapter folder to evaluate against the base; repeat for several",
    )
    parser.add_argument(
        "--tasks",
        default=OFFLINE_TASKS,
        help="comma-separated lm-eval task names, groups, tags or task YAML files (default: ina's offline tasks)",
    )
    parser.add_argument(
        "--include_path", action="append", default=[], metavar="DIR", help="a folder of extra task YAMLs"
    )
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT, help="where eval_results.json and .md go")
    parser.add_argument(
        "--limit", type=float, default=None, help="examples per task (a fraction if < 1); default: all"
    )
    parser.add_argument(
        "--num_fewshot", type=int, default=None, help="few-shot examples (default: the task's)"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--apply_chat_template",
        choices=("auto", "yes", "no"),
        default="auto",
        help="format prompts with the tokenizer's chat template; auto: yes for ina's tasks, no for lm-eval's",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPUs that have it), ..."
    )
    parser.add_argument(
        "--torch_threads", type=int, default=None, help="CPU threads for torch (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of lm-eval's sampling (few-shot examples)")
    parser.set_defaults(handler=_eval)


def options_from(args: argparse.Namespace) -> EvalOptions:
    """The `EvalOptions` of the parsed flags; every input problem a `UsageError` naming its flag."""
    from ina.evaluate.runner import EvalOptions
    from ina.foundation.adapters import parse_adapter_specs, split_list

    tasks = split_list(args.tasks)
    if not tasks:
        raise UsageError(f"--tasks names no task; got {args.tasks!r}. Example: --tasks {OFFLINE_TASKS}")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1; got {args.batch_size}")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be > 0 (a count, or a fraction below 1); got {args.limit:g}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UsageError(f"--num_fewshot must be ≥ 0; got {args.num_fewshot}")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise UsageError(f"--torch_threads must be at least 1; got {args.torch_threads}")
    if Path(args.output_dir).is_file():
        raise UsageError(f"--output_dir {args.output_dir!r} is a file; give a folder")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    return EvalOptions(
        base_model=args.base_model,
        adapters=parse_adapter_specs(args.adapter),
        tasks=tasks,
        include_path=list(args.include_path),
        limit=limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        apply_chat_template=args.apply_chat_template,
        device=args.device,
        dtype=args.dtype,
        torch_threads=args.torch_threads,
        seed=args.seed,
    )


def _eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():  # lm-eval draws progress bars for every stage; a log file gets none
        os.environ.setdefault("TQDM_DISABLE", "1")
    options = options_from(args)
    from ina.evaluate.report import describe, write_results
    from ina.evaluate.runner import evaluate

    results = evaluate(options, log=print)
    json_file, markdown_file = write_results(results, args.output_dir)
    print(describe(results))
    print(f"wrote {markdown_file} and {json_file}")
    return 0
