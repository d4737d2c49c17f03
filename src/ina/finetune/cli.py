"""`ina finetune` and `ina generate`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ina.finetune.arguments import fields

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `finetune` and `generate` to the `ina` parser."""
    finetune = subparsers.add_parser(
        "finetune",
        allow_abbrev=False,
        help="instruction-tune a causal LM with an InA adapter (no arguments: the embedded SmolLM2 demo)",
        description=(
            "Instruction fine-tuning with InA on the Hugging Face Trainer. Any transformers.TrainingArguments "
            "flag (--max_steps, --bf16, --gradient_checkpointing, --deepspeed, --fsdp, --report_to ...) is "
            "passed to the Trainer. With no --base_model, fine-tunes the embedded SmolLM2-135M-Instruct on the "
            "embedded English+Chinese data in a few minutes on a CPU."
        ),
    )
    for name, field in fields().items():
        flags = [f"--{name}", *field.metadata.get("aliases", ())]
        help_text = f"{field.metadata['help']} (default: {field.default!r})"
        if field.type in (bool, "bool"):
            finetune.add_argument(
                *flags,
                dest=name,
                type=_boolean,
                nargs="?",
                const=True,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            finetune.add_argument(*flags, dest=name, type=kind, default=argparse.SUPPRESS, help=help_text)
    finetune.set_defaults(handler=_finetune, accepts_extra_args=True)

    generate = subparsers.add_parser(
        "generate",
        help="generate with a base model and InA adapters, using the prompt template the adapter was trained with",
    )
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
    from ina.finetune.train import FinetuneError, finetune, resolve

    own = set(fields())
    given = {k: v for k, v in vars(args).items() if k in own}
    try:
        finetune_args, tokens = resolve(given, extra)
        finetune(finetune_args, tokens)
    except FinetuneError as error:
        print(f"ina finetune: error: {error}", file=sys.stderr)
        return 2
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from ina.finetune.generate import (
        BASE,
        generate_answers,
        load_for_generation,
        parse_adapters,
        read_prompts,
        using_adapter,
    )
    from ina.finetune.train import write_jsonl_atomic

    problems = []
    for name in ("max_new_tokens", "num_beams", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1; got {getattr(args, name)}")
    if args.temperature < 0:
        problems.append(f"--temperature must be ≥ 0 (0 is greedy); got {args.temperature}")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1]; got {args.top_p}")
    try:
        adapters = parse_adapters(args.adapter)
        prompts = [(p, args.input) for p in args.prompt]
        if args.prompts_file:
            prompts += read_prompts(args.prompts_file)
    except (OSError, ValueError) as error:
        problems.append(str(error))
        adapters, prompts = {}, []
    if not problems and not prompts:
        problems.append("no prompt: give one as an argument or use --prompts_file FILE")
    if problems:
        print("ina generate: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    model, tokenizer, template = load_for_generation(args.base_model, adapters, args.prompt_template_name)
    options: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "num_beams": args.num_beams,
        "repetition_penalty": args.repetition_penalty,
    }
    if args.temperature > 0:
        torch.manual_seed(args.seed)
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    names = list(adapters) or [BASE]
    if args.compare_base and adapters:
        names = [BASE, *names]
    stream = not args.no_stream and args.output is None and args.num_beams == 1
    rows = []
    for name in names:
        if stream:
            answers = []
            for prompt in prompts:
                print(
                    f"\n[{name if name != BASE else 'base'}] {prompt[0]}"
                    + (f"\n{prompt[1]}" if prompt[1] else "")
                )
                streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
                with using_adapter(model, name):
                    answers += generate_answers(
                        model, tokenizer, template, [prompt], streamer=streamer, **options
                    )
        else:
            with using_adapter(model, name):
                answers = generate_answers(model, tokenizer, template, prompts, **options)
        for (instruction, input_text), answer in zip(prompts, answers, strict=True):
            rows.append(
                {
                    "adapter": name if name != BASE else None,
                    "instruction": instruction,
                    "input": input_text,
                    "output": answer,
                }
            )
    if args.output:
        write_jsonl_atomic(args.output, rows)
        print(f"wrote {len(rows)} answers to {args.output}")
    elif not stream:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return 0
