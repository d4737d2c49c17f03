"""`ina finetune`'s own options (the seed's and alpaca-lora's flags), written once for CLI, config and help.

The adapter flags are `ina.foundation.adapters.AdapterArguments` with this command's defaults. Anything
that is not one of these options is a `transformers.TrainingArguments` field (``--bf16``,
``--max_steps``, ``--deepspeed``, ...) and goes to the Trainer. Values come, lowest priority first, from
the defaults below, the quick defaults of the embedded model (when no ``--base_model`` is given), the
``--config`` YAML/JSON file, then the command line. This module imports no framework at import time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from ina.embedded import DEMO_ADAPTER_DIR
from ina.foundation import arguments as flags
from ina.foundation import trainer_arguments
from ina.foundation.adapters import AdapterArguments, adapter_problems
from ina.foundation.errors import UsageError
from ina.foundation.models import DTYPES
from ina.foundation.prompts import PromptTemplate

option = flags.option


class FinetuneError(UsageError):
    """The run cannot go on; the message says which option to change."""


@dataclass
class FinetuneArguments(AdapterArguments):
    """Options of `ina finetune` (see each field's ``help``); every problem is raised at once on construction."""

    base_model: str = option(
        "", "model folder or hub name of a causal LM; empty: the embedded SmolLM2-135M-Instruct (offline)"
    )
    data_path: str = option(
        "",
        "Alpaca/ShareGPT/messages .json or .jsonl file, a folder of them, or a hub dataset name; "
        "empty: the embedded English+Chinese Alpaca set",
        ("--data_dir",),
    )
    output_dir: str = option(
        "outputs/ina-finetune",
        f"where checkpoints, the adapter and the summary go (default: {DEMO_ADAPTER_DIR!r} for the embedded "
        "demo, 'outputs/ina-finetune' with --base_model)",
    )
    config: str = option(
        "", "YAML or JSON file of options (these flags and any TrainingArguments field); flags override it"
    )
    # the adapter: AdapterArguments (alpaca-lora's defaults), plus the seed's alias and LLaMA's targets
    inhibition: float = flags.redefault(
        AdapterArguments, "inhibition", 0.3, aliases=("--threshold_ratio_inhi",)
    )
    lora_target_modules: str = flags.redefault(
        AdapterArguments,
        "lora_target_modules",
        "q_proj,v_proj",
        help='modules to adapt: a JSON list (\'["q_proj","v_proj"]\') or a comma list; BLOOM: query_key_value',
    )
    # training (alpaca-lora's names)
    batch_size: int = option(128, "examples per optimizer step, over all processes")
    micro_batch_size: int = option(
        4, "examples per forward pass per process (gradient accumulation makes up the rest)"
    )
    num_epochs: float = option(3, "passes over the training data (a TrainingArguments --max_steps wins)")
    learning_rate: float = option(3e-4, "peak learning rate")
    cutoff_len: int = option(256, "tokens per example; longer examples are cut")
    val_set_size: float = option(
        2000, "validation examples held out: a count, or a fraction if < 1 (at most 20%% of the data is used)"
    )
    train_on_inputs: bool = option(
        False, "also train on the prompt tokens (otherwise the labels mask the prompt)"
    )
    add_eos_token: bool = option(True, "end each answer with the EOS token (chat templates add their own)")
    group_by_length: bool = option(False, "batch examples of similar length (faster, odd-looking loss curve)")
    resume_from_checkpoint: str = option(
        "", "checkpoint folder to resume from, or 'last' for the newest checkpoint in --output_dir"
    )
    overwrite_output_dir: bool = option(
        False,
        "start afresh in an --output_dir that holds a finished or unfinished run (its checkpoints are "
        "removed first); without it such a folder is refused",
    )
    prompt_template_name: str = option(
        "auto",
        "alpaca, alpaca_zh, chat (the tokenizer's chat template), a template .json file, or auto "
        "(chat for conversation data, else alpaca)",
    )
    # data handling
    skip_bad_records: bool = option(False, "train without malformed records (reported) instead of stopping")
    max_records: int = option(0, "use only the first N records (0: all); handy for quick runs")
    # model loading
    load_in_8bit: bool = option(
        False, "load the base model 8-bit with bitsandbytes (QLoRA; needs a CUDA GPU)"
    )
    load_in_4bit: bool = option(
        False, "load the base model 4-bit NF4 with bitsandbytes (QLoRA; needs a CUDA GPU)"
    )
    dtype: str = option(
        "auto",
        "weights dtype: auto (float32 on CPU, bfloat16 on GPUs that have it), float32, bfloat16, float16",
    )
    trust_remote_code: bool = option(
        False, "allow the model repository's own code (only for models you trust)"
    )
    # reporting
    show_examples: int = option(
        3, "held-out prompts whose base and fine-tuned answers are printed at the end"
    )
    record_examples: int = option(
        16,
        "held-out prompts answered by the base and the fine-tuned model at the end and recorded in "
        "training_summary.json (-1: every held-out example; each costs two generations)",
    )
    example_max_new_tokens: int = option(48, "tokens generated per example answer")
    eval: bool = option(
        False,
        "at the end, run `ina eval` (ina's offline tasks) on the new adapter and its base; table in OUTPUT_DIR/eval",
    )
    eval_limit: int = option(0, "examples per task for --eval (0: all)")
    seed: int = option(42, "random seed (data split, shuffling, adapter initialisation)")

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise FinetuneError("invalid options:\n" + "\n".join(f"  - {p}" for p in problems))
        # one spelling from here on: the comma list the adapter builder reads
        self.lora_target_modules = ",".join(self.target_modules())

    def answered_examples(self) -> int:
        """How many held-out prompts are answered at the end (-1: all): enough to print and to record."""
        if self.record_examples < 0:
            return -1
        return max(self.show_examples, self.record_examples)

    def target_modules(self) -> list[str]:
        """``lora_target_modules`` parsed from a JSON list or a comma list."""
        text = (self.lora_target_modules or "").strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise FinetuneError(
                    f"--lora_target_modules: not a JSON list ({error.msg}); got {text!r}. "
                    'Write \'["q_proj","v_proj"]\' or q_proj,v_proj'
                ) from None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FinetuneError(f"--lora_target_modules must list module names as strings; got {text!r}")
            names = value
        else:
            names = [part.strip() for part in text.split(",")]
        names = [n for n in names if n]
        if not names:
            raise FinetuneError(
                f"--lora_target_modules names no module; got {text!r}. Example: q_proj,v_proj"
            )
        return names

    def problems(self) -> list[str]:
        """Every invalid value, one message each (empty when all is well), found before anything is loaded."""
        problems = []
        # InAConfig checks ρ again when the adapter is built; this message names the seed's alias, before loading
        if not 0 <= self.inhibition < 1:
            problems.append(f"--inhibition (--threshold_ratio_inhi) must be in [0, 1); got {self.inhibition}")
        for name in ("lora_r", "batch_size", "micro_batch_size", "cutoff_len"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be at least 1; got {getattr(self, name)}")
        if self.micro_batch_size >= 1 and self.batch_size % self.micro_batch_size:
            problems.append(
                f"--batch_size ({self.batch_size}) must be a multiple of --micro_batch_size ({self.micro_batch_size})"
            )
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"--lora_dropout must be in [0, 1); got {self.lora_dropout}")
        if self.val_set_size < 0:
            problems.append(
                f"--val_set_size must be ≥ 0 (a count, or a fraction below 1); got {self.val_set_size}"
            )
        if self.load_in_8bit and self.load_in_4bit:
            problems.append("--load_in_8bit and --load_in_4bit exclude each other; choose one")
        if self.dtype not in DTYPES:
            problems.append(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.max_records < 0:
            problems.append(f"--max_records must be ≥ 0; got {self.max_records}")
        if self.show_examples < 0:
            problems.append(f"--show_examples must be ≥ 0; got {self.show_examples}")
        if self.record_examples < -1:
            problems.append(
                f"--record_examples must be ≥ 0, or -1 for every held-out example; got {self.record_examples}"
            )
        if self.eval_limit < 0:
            problems.append(f"--eval_limit must be ≥ 0 (0: every example); got {self.eval_limit}")
        try:
            self.target_modules()
        except FinetuneError as error:
            problems.append(str(error))
        problems += adapter_problems(self)  # e.g. --activation foo, before any model is loaded
        if self.prompt_template_name != "auto":
            try:
                PromptTemplate.load(self.prompt_template_name)
            except UsageError as error:
                problems.append(str(error))
        if self.output_dir and os.path.isfile(self.output_dir):
            problems.append(f"--output_dir {self.output_dir!r} is a file; give a folder")
        return problems


# What `ina finetune` with no --base_model runs: the embedded SmolLM2-135M-Instruct on the embedded data,
# sized to take a few minutes on 2 CPU cores (a command-line flag or --config value still wins).
QUICK_DEFAULTS: dict[str, Any] = {
    "prompt_template_name": "chat",
    "batch_size": 4,
    "micro_batch_size": 4,
    "cutoff_len": 144,
    "val_set_size": 16,
    "learning_rate": 2e-3,
    "lora_target_modules": "q_proj,k_proj,v_proj,o_proj",
    "example_max_new_tokens": 32,
    "output_dir": DEMO_ADAPTER_DIR,
}
QUICK_TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 24,
    "logging_steps": 2,
    "eval_steps": 12,
    "save_steps": 12,
}
# Flags of AdapterArguments that `ina finetune` does not offer.
HIDDEN = ("modules_to_save",)


def fields() -> dict[str, dataclasses.Field]:
    """FinetuneArguments' command-line fields by name."""
    return {f.name: f for f in dataclasses.fields(FinetuneArguments) if f.name not in HIDDEN}


def resolve(given: dict[str, Any], extra: list[str]) -> tuple[FinetuneArguments, list[str]]:
    """`FinetuneArguments` and Trainer tokens from the flags given on the command line (and ``--config``).

    Priority, lowest first: defaults, quick defaults for the embedded model, the config file, the flags.
    """
    from ina.foundation.harness import errors_as

    with errors_as(FinetuneError):
        config: dict[str, Any] = {}
        tokens = list(extra)
        if given.get("config"):
            config, rest = flags.split_values(
                flags.read_config(given["config"], "--config"), FinetuneArguments
            )
            tokens = flags.to_argv(rest) + tokens
        values = {**config, **given}
        if not values.get("base_model"):
            values = {**QUICK_DEFAULTS, **values}
            quick = {k: v for k, v in QUICK_TRAINING_DEFAULTS.items() if not flags.flag_given(tokens, k)}
            tokens = flags.to_argv(quick) + tokens
        return flags.from_values(FinetuneArguments, values), tokens


def training_arguments(finetune: FinetuneArguments, extra: list[str], world_size: int | None = None) -> Any:
    """The `TrainingArguments`: values derived from ``finetune`` overridden by ``extra`` CLI tokens."""
    from ina.foundation.harness import errors_as

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    per_device, accumulation = split_batch(finetune.batch_size, finetune.micro_batch_size, world)
    derived: dict[str, Any] = {
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": finetune.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "num_train_epochs": finetune.num_epochs,
        "learning_rate": finetune.learning_rate,
        "warmup_steps": 0.03,
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 200,
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 3,
        "seed": finetune.seed,
        "report_to": "none",
        "remove_unused_columns": False,
        "logging_first_step": True,
    }
    if finetune.group_by_length:
        derived["train_sampling_strategy"] = "group_by_length"
    from ina.finetune.launch import uses_deepspeed

    if uses_deepspeed(extra):
        derived["use_cpu"] = (
            False  # accelerate turns DeepSpeed off for "CPU" processes; it runs on CPUs (gloo)
        )
    with errors_as(FinetuneError):
        return trainer_arguments.training_arguments(
            extra, finetune.output_dir, derived, command="ina finetune"
        )


def split_batch(batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """(examples per forward per process, accumulation steps) whose product × ``world_size`` is ``batch_size``.

    The per-process batch is the largest divisor of ``batch_size / world_size`` not above ``micro_batch_size``
    (``--batch_size 4 --micro_batch_size 4`` on 2 processes: 2 × 1 × 2 = 4). When ``batch_size`` is not a
    multiple of ``world_size`` it cannot be kept: each process then takes ``ceil(batch_size / world_size)``
    examples (capped at ``micro_batch_size``) and `batch_note` says so.
    """
    if world_size <= 1:
        return micro_batch_size, max(1, batch_size // micro_batch_size)
    share, rest = divmod(batch_size, world_size)
    if rest or not share:
        per_device = min(micro_batch_size, -(-batch_size // world_size))
        return per_device, max(1, -(-batch_size // (per_device * world_size)))
    per_device = max(d for d in range(1, min(micro_batch_size, share) + 1) if share % d == 0)
    return per_device, share // per_device


def batch_note(finetune: FinetuneArguments, per_device: int, accumulation: int, world: int) -> str | None:
    """One line when a step's examples (``per_device × accumulation × world``) differ from ``--batch_size``,
    or when the micro-batch was lowered to keep it; None when the run is as asked."""
    effective = per_device * accumulation * world
    split = f"{per_device} per forward × {accumulation} accumulation step(s) × {world} process(es)"
    if effective != finetune.batch_size:
        why = (
            f"--batch_size is not a multiple of the {world} processes"
            if finetune.batch_size % world
            else "set by --per_device_train_batch_size / --gradient_accumulation_steps"
        )
        return f"note: each optimizer step sees {effective} examples ({split}), not --batch_size {finetune.batch_size} ({why})"
    if per_device != finetune.micro_batch_size:
        return (
            f"note: --batch_size {finetune.batch_size} is kept over {world} process(es): {split} "
            f"(--micro_batch_size {finetune.micro_batch_size} lowered to {per_device})"
        )
    return None
