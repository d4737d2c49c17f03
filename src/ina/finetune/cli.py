"""`ina finetune` and `ina generate`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ina.finetune.arguments import HIDDEN, FinetuneArguments
from ina.foundation.arguments import add_arguments, given


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `finetune` and `generate` to the `ina` parser."""
    finetune = subparsers.add_parser(
        "finetune",
        allow_abbrev=False,
        description=(
            "Instruction fine-tuning with InA on the Hugging Face Trainer. Any transformers.TrainingArguments "
            "flag (--max_steps, --bf16, --activation_checkpointing, --deepspeed, --fsdp, --report_to ...) is "
            "passed to the Trainer. With no --base_model, fine-tunes the embedded SmolLM2-135M-Instruct on the "
            "embedded English+Chinese data in a few minutes on a CPU."
        ),
    )
    first = ("base_model", "data_path", "output_dir", "config", "inhibition", "activation")
    add_arguments(finetune, FinetuneArguments, exclude=HIDDEN, first=first)
    finetune.set_defaults(handler=_finetune, accepts_extra_args=True)

    generate = subparsers.add_parser("generate")
    generate.add_argument("prompt", nargs="*", help="instruction(s) to answer (or use --prompts_file)")
    generate.add_argument(
        "--base_model", default=None, help="default: the base recorded in the first adapter"
    )
    generate.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an adapter folder; repeat for several",
    )
    generate.add_argument("--input", default="", help="the Alpaca `input` (context) for every prompt")
    generate.add_argument(
        "--prompts_file", default=None, help="JSON/JSONL records (instruction, input) or text lines"
    )
    generate.add_argument("--output", default=None, help="write answers as JSON Lines to this file")
    generate.add_argument(
        "--prompt_template_name",
        default="auto",
        help="default: the adapter's (ina_prompt.json), else chat or alpaca",
    )
    generate.add_argument(
        "--compare_base", action="store_true", help="also answer with the base model (no adapter)"
    )
    generate.add_argument("--max_new_tokens", type=int, default=128)
    generate.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy (the default, reproducible)"
    )
    generate.add_argument("--top_p", type=float, default=1.0)
    generate.add_argument("--top_k", type=int, default=50)
    generate.add_argument("--num_beams", type=int, default=1)
    generate.add_argument("--repetition_penalty", type=float, default=1.0)
    generate.add_argument("--batch_size", type=int, default=8)
    generate.add_argument("--seed", type=int, default=0, help="sampling seed")
    generate.add_argument(
        "--no_stream", action="store_true", help="print whole answers instead of streaming tokens"
    )
    generate.set_defaults(handler=_generate)


def _finetune(args: argparse.Namespace, extra: list[str]) -> int:
    from ina.finetune.train import finetune, resolve

    # a FinetuneError (a UsageError) is reported by `ina.cli.main`: one line, exit code 2
    finetune_args, tokens = resolve(given(args, FinetuneArguments), extra)
    finetune(finetune_args, tokens, log=print)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from ina.core.loading import AdapterFileError, check_adapter_folder
    from ina.finetune.generate import (
        generate_answers,
        load_for_generation,
        option_problems,
        read_prompts,
    )
    from ina.foundation.adapters import BASE_ADAPTER, parse_adapter_specs, using_adapter
    from ina.foundation.errors import UsageError
    from ina.foundation.files import output_problem, write_jsonl
    from ina.foundation.prompts import PromptTemplate

    # everything that needs no model is checked first, and all problems are reported together
    problems = option_problems(args)
    problems += [problem] if (problem := output_problem(args.output, "--output")) else []
    adapters: dict[str, Any] = {}
    prompts: list[tuple[str, str]] = [(p, args.input) for p in args.prompt]
    try:
        adapters = parse_adapter_specs(args.adapter)
    except UsageError as error:
        problems.append(str(error))
    for name, path in adapters.items():
        try:
            check_adapter_folder(path)
        except AdapterFileError as error:
            problems.append(f"--adapter {name}={path}: {error}")
    try:
        if args.prompts_file:
            prompts += read_prompts(args.prompts_file)
        if args.prompt_template_name not in (None, "auto"):
            PromptTemplate.load(args.prompt_template_name)
    except UsageError as error:
        problems.append(str(error))
    if not problems and not prompts:
        problems.append("no prompt: give one as an argument or use --prompts_file FILE")
    if problems:
        raise UsageError("; ".join(problems))
    model, tokenizer, template = load_for_generation(args.base_model, adapters, args.prompt_template_name)
    options: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "num_beams": args.num_beams,
        "repetition_penalty": args.repetition_penalty,
    }
    if args.temperature > 0:
        import torch

        torch.manual_seed(args.seed)
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    names = list(adapters) or [BASE_ADAPTER]
    if args.compare_base and adapters:
        names = [BASE_ADAPTER, *names]
    stream = not args.no_stream and args.output is None and args.num_beams == 1
    rows = []
    for name in names:
        if stream:
            from transformers import TextStreamer

            answers = []
            for prompt in prompts:
                label = name if name != BASE_ADAPTER else "base"
                print(f"\n[{label}] {prompt[0]}" + (f"\n{prompt[1]}" if prompt[1] else ""))
                streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
                with using_adapter(model, name):
                    answers += generate_answers(
                        model, tokenizer, template, [prompt], streamer=streamer, **options
                    )
        else:
            with using_adapter(model, name):
                answers = generate_answers(model, tokenizer, template, prompts, **options)
        for (instruction, input_text), answer in zip(prompts, answers, strict=True):
            adapter = name if name != BASE_ADAPTER else None
            rows.append(
                {"adapter": adapter, "instruction": instruction, "input": input_text, "output": answer}
            )
    if args.output:
        write_jsonl(args.output, rows)
        print(f"wrote {len(rows)} answers to {args.output}")
    elif not stream:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return 0
