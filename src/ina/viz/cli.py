"""`ina viz attention`, `ina viz inhibition`, `ina viz curves`: seeing what the inhibition gate does."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ina.foundation.errors import UsageError, one_line

SEED_TEXT = "I put my red bag in the black bag."
SEED_PAIR = "What is the colour of my bag?"
TEXT_KEYS = ("text", "sentence", "instruction", "question", "premise", "sentence1", "question1")
PAIR_KEYS = ("input", "context", "hypothesis", "sentence2", "question2", "output")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `ina viz` and its three subcommands to the `ina` parser."""
    viz = subparsers.add_parser(
        "viz",
        description="Pictures of what InA adapters do, computed on the unmerged model.",
    )
    commands = viz.add_subparsers(dest="viz_command", metavar="VIZ_COMMAND")

    def usage(args: argparse.Namespace) -> int:
        viz.print_help()
        return 2

    viz.set_defaults(handler=usage)

    model_flags = argparse.ArgumentParser(add_help=False)
    model_flags.add_argument(
        "--base_model",
        required=True,
        help="model folder (or hub id when online); `minilm` / `smollm` for the embedded offline defaults",
    )
    model_flags.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )
    model_flags.add_argument(
        "--dtype", default="float32", help="weights dtype: float32 (default), bfloat16, float16"
    )
    model_flags.add_argument(
        "--out", required=True, type=Path, help="folder to write the pictures and numbers into"
    )

    attention = commands.add_parser(
        "attention",
        parents=[model_flags],
        help="per-layer attention maps (mean over heads) of the base and each adapter, unmerged",
        description="Per-layer attention (averaged over heads) of the base model and each adapter, run unmerged "
        "with eager attention. Writes attention-grid.png, attention-moved.png (adapter minus base), attention.html "
        "(every layer with its 'attention moved' maps and the tokens that lost or gained most) and attention.json.",
    )
    attention.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an adapter folder to compare with the base (repeat for several); bare PATH is named after its folder",
    )
    attention.add_argument("--text", required=True, help=f"the input text, e.g. {SEED_TEXT!r}")
    attention.add_argument(
        "--text_pair",
        default=None,
        help=f"a second segment (encoders: [CLS] text [SEP] pair [SEP]), e.g. {SEED_PAIR!r}",
    )
    attention.add_argument(
        "--layers",
        default=None,
        help="comma-separated layer numbers from 1, negative from the end (-1 = last), or `all`; "
        "default: the first four and the last four (1,2,3,4,-4,-3,-2,-1)",
    )
    attention.set_defaults(handler=_guarded(_attention, "attention"))

    inhibition = commands.add_parser(
        "inhibition",
        parents=[model_flags],
        help="per adapted layer: share of rank units below the threshold, per-token max, adapter/base output norm",
        description="What the gate f(h − ρ·max_r h) does, per adapted layer, measured with forward hooks on the "
        "unmerged model. Writes inhibition.json, inhibition.md, inhibition.png and inhibition-tokens.png.",
    )
    inhibition.add_argument(
        "--adapter",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="an adapter folder (repeat to compare several, e.g. ρ = 0.1, 0.3, 0.9)",
    )
    source = inhibition.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="an input text (repeat for several)")
    source.add_argument(
        "--data",
        type=Path,
        help="texts to run: .txt (one per line), .json (a list) or .jsonl; records use the first of "
        f"{list(TEXT_KEYS)} (joined with {list(PAIR_KEYS)} when present)",
    )
    inhibition.add_argument(
        "--text_pair",
        default=None,
        help="a second segment read with every --text (encoders: [CLS] text [SEP] pair [SEP])",
    )
    inhibition.add_argument(
        "--max_texts", type=int, default=64, help="use at most this many texts (default 64)"
    )
    inhibition.set_defaults(handler=_guarded(_inhibition, "inhibition"))

    curves = commands.add_parser(
        "curves",
        help="training and validation loss of several runs on one plot",
        description="Training and validation loss of several runs (trainer_state.json in each RUN_DIR or its "
        "last checkpoint-*), labelled by folder name. Writes curves.png and curves.json.",
    )
    curves.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output folders of training runs")
    curves.add_argument("--out", type=Path, default=Path("."), help="folder to write into (default: here)")
    curves.set_defaults(handler=_guarded(_curves, "curves"))


def _guarded(handler: Callable[[argparse.Namespace], int], name: str) -> Callable[[argparse.Namespace], int]:
    """Print user errors as one line naming the command, exit code 2, instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        from ina.foundation.attention import AttentionUnavailableError
        from ina.foundation.files import output_problem

        try:
            problem = output_problem(args.out, "--out", folder=True)
            if problem:  # before any model is loaded
                raise UsageError(problem)
            return handler(args)
        except (ValueError, FileNotFoundError, AttentionUnavailableError) as error:
            print(f"ina viz {name}: error: {one_line(error)}", file=sys.stderr)
            return 2

    return run


def parse_layers(value: str | None) -> list[int] | None:
    """``"1,2,-1"`` → ``[1, 2, -1]``; None → None (the default layers)."""
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"--layers must be comma-separated integers such as 1,2,-1 or `all`; got {value!r}"
        ) from None


def read_texts(path: Path, limit: int) -> list[str]:
    """The texts of a .txt / .json / .jsonl file (see `--data`), at most ``limit``."""
    from ina.foundation.files import read_text

    if limit < 1:
        raise UsageError(f"--max_texts must be ≥ 1; got {limit}")
    if path.suffix not in (".txt", ".json", ".jsonl"):
        raise UsageError(f"--data must end in .txt, .json or .jsonl; got {path.name!r}")
    raw = read_text(path, "--data", "a .txt (one text per line), .json or .jsonl file")
    if path.suffix == ".txt":
        records: list = [line for line in raw.splitlines() if line.strip()]
    else:
        lines = raw.splitlines() if path.suffix == ".jsonl" else [raw]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                if line.strip():
                    records.append(json.loads(line))
            except json.JSONDecodeError as error:
                where = number if path.suffix == ".jsonl" else error.lineno
                raise UsageError(
                    f"--data {path}:{where}: invalid JSON ({error.msg}); fix that line"
                ) from None
        if path.suffix == ".json":
            records = records[0] if records else []
        if isinstance(records, dict):
            records = next((v for v in records.values() if isinstance(v, list)), [records])
        if not isinstance(records, list):
            raise UsageError(f"--data {path.name}: expected a list of texts or records")
    texts = []
    for record in records[:limit]:
        if isinstance(record, str):
            texts.append(record)
            continue
        if not isinstance(record, dict):
            raise UsageError(f"--data {path.name}: records must be strings or objects; got {record!r:.80}")
        first = next((str(record[k]) for k in TEXT_KEYS if record.get(k)), None)
        if first is None:
            raise UsageError(
                f"--data {path.name}: a record has none of the keys {list(TEXT_KEYS)}: {record!r:.120}"
            )
        second = next((str(record[k]) for k in PAIR_KEYS if record.get(k)), None)
        texts.append(f"{first}\n{second}" if second else first)
    if not texts:
        raise UsageError(f"--data {path.name}: no texts found")
    return texts


def _attention(args: argparse.Namespace) -> int:
    from ina.foundation.adapters import parse_adapter_specs
    from ina.foundation.attention import num_layers
    from ina.foundation.models import display_name
    from ina.viz.models import load_models
    from ina.viz.report import attention_report

    every_layer = args.layers is not None and args.layers.strip() == "all"
    layers = None if every_layer else parse_layers(args.layers)
    adapters = parse_adapter_specs(args.adapter, "--adapter")
    model, tokenizer = load_models(args.base_model, adapters, device=args.device, dtype=args.dtype)
    if every_layer:
        layers = list(range(1, (num_layers(model) or 0) + 1)) or None
    data = attention_report(
        model,
        tokenizer,
        [(name, str(path)) for name, path in adapters.items()],
        args.text,
        args.text_pair,
        layers,
        args.out,
        base_model=display_name(args.base_model),
    )
    if data["truncated"]:
        print(
            f"note: the text was truncated to the model's context of {data['context_length']} tokens",
            file=sys.stderr,
        )
    for line in _summary_lines(data):
        print(line)
    moved = ", attention-moved.png" if adapters else ""
    print(f"wrote {args.out}/attention-grid.png{moved}, attention.html, attention.json")
    return 0


def _summary_lines(data: dict) -> list[str]:
    lines = [f"{len(data['tokens'])} tokens, layers {data['layers']} of {data['num_layers']}"]
    for name, per_layer in data["moved"].items():
        changes = ", ".join(f"L{entry['layer']} {entry['mean_abs_change']:.4f}" for entry in per_layer)
        lines.append(f"attention moved by {name} (mean |adapter − base|): {changes}")
    return lines


def _inhibition(args: argparse.Namespace) -> int:
    from ina.foundation.adapters import parse_adapter_specs
    from ina.foundation.models import display_name
    from ina.viz.models import load_models
    from ina.viz.report import inhibition_report, markdown_tables

    if args.text_pair is not None and not args.text:
        raise UsageError("--text_pair goes with --text; with --data, put both segments in each record")
    if args.max_texts < 1:
        raise UsageError(f"--max_texts must be ≥ 1; got {args.max_texts}")
    if args.text:
        texts = [(t, args.text_pair) if args.text_pair else t for t in args.text[: args.max_texts]]
    else:
        texts = read_texts(args.data, args.max_texts)
    adapters = parse_adapter_specs(args.adapter, "--adapter")
    model, tokenizer = load_models(args.base_model, adapters, device=args.device, dtype=args.dtype)
    result = inhibition_report(
        model,
        tokenizer,
        [(name, str(path)) for name, path in adapters.items()],
        texts,
        args.out,
        base_model=display_name(args.base_model),
    )
    truncated = sorted({i for a in result["adapters"] for i in a["truncated"]})
    if truncated:
        print(
            f"note: {len(truncated)} text(s) were truncated to the model's context (indices {truncated[:10]})",
            file=sys.stderr,
        )
    print(markdown_tables(result).split("\n## Per adapted layer")[0].strip())
    print(f"wrote {args.out}/inhibition.md, inhibition.png, inhibition-tokens.png, inhibition.json")
    return 0


def _curves(args: argparse.Namespace) -> int:
    from ina.viz.report import curves_report

    runs = curves_report(args.run_dirs, args.out)
    for run in runs:
        last = [f"{points[-1]['loss']:.4f}" if points else "-" for points in (run["train"], run["eval"])]
        print(
            f"{run['name']}: {len(run['train'])} train / {len(run['eval'])} validation points; "
            f"last train loss {last[0]}, last validation loss {last[1]}"
        )
    print(f"wrote {args.out}/curves.png, curves.json")
    return 0
