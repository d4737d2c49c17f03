"""`ina finetune`'s own options (the seed's and alpaca-lora's flags), written once for CLI, config and help.

Anything that is not one of these is a `transformers.TrainingArguments` field (``--bf16``,
``--max_steps``, ``--deepspeed``, ...) and goes to the Trainer. Values come, lowest priority first, from
the defaults below, the quick defaults of the embedded model (when no ``--base_model`` is given), the
``--config`` YAML file, then the command line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


def _option(default: Any, help: str, aliases: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"help": help, "aliases": aliases})


@dataclass
class FinetuneArguments:
    """Options of `ina finetune` (see each field's ``help``)."""

    base_model: str = _option(
        "", "model folder or hub name of a causal LM; empty: the embedded SmolLM2-135M-Instruct (offline)"
    )
    data_path: str = _option(
        "",
        "Alpaca/ShareGPT/messages .json or .jsonl file, a folder of them, or a hub dataset name; "
        "empty: the embedded English+Chinese Alpaca set",
        ("--data_dir",),
    )
    output_dir: str = _option("outputs/ina-finetune", "where checkpoints, the adapter and the summary go")
    config: str = _option(
        "", "YAML file of options (these flags and any TrainingArguments field); flags override it"
    )
    # adapter
    inhibition: float = _option(
        0.3, "InA inhibition ratio ρ in [0, 1); 0 is plain LoRA", ("--threshold_ratio_inhi",)
    )
    activation: str = _option(
        "leaky_relu", "gate activation: leaky_relu (authors' code), gelu (paper) or identity"
    )
    lora_r: int = _option(8, "adapter rank r")
    lora_alpha: float = _option(16, "adapter scaling numerator (scale = lora_alpha / r)")
    lora_dropout: float = _option(0.05, "dropout on the adapter's input")
    lora_target_modules: str = _option(
        "q_proj,v_proj",
        'modules to adapt: a JSON list (\'["q_proj","v_proj"]\') or a comma list; BLOOM: query_key_value',
    )
    # training (alpaca-lora's names)
    batch_size: int = _option(128, "examples per optimizer step, over all processes")
    micro_batch_size: int = _option(
        4, "examples per forward pass per process (gradient accumulation makes up the rest)"
    )
    num_epochs: float = _option(3, "passes over the training data (a TrainingArguments --max_steps wins)")
    learning_rate: float = _option(3e-4, "peak learning rate")
    cutoff_len: int = _option(256, "tokens per example; longer examples are cut")
    val_set_size: float = _option(
        2000, "validation examples held out: a count, or a fraction if < 1 (at most 20%% of the data is used)"
    )
    train_on_inputs: bool = _option(
        False, "also train on the prompt tokens (default: labels mask the prompt)"
    )
    add_eos_token: bool = _option(True, "end each answer with the EOS token (chat templates add their own)")
    group_by_length: bool = _option(
        False, "batch examples of similar length (faster, odd-looking loss curve)"
    )
    resume_from_checkpoint: str = _option(
        "", "checkpoint folder to resume from, or 'last' for the newest checkpoint in --output_dir"
    )
    prompt_template_name: str = _option(
        "auto",
        "alpaca, alpaca_zh, chat (the tokenizer's chat template), a template .json file, or auto "
        "(chat for conversation data, else alpaca)",
    )
    # data handling
    skip_bad_records: bool = _option(False, "train without malformed records (reported) instead of stopping")
    max_records: int = _option(0, "use only the first N records (0: all); handy for quick runs")
    # model loading
    load_in_8bit: bool = _option(
        False, "load the base model 8-bit with bitsandbytes (QLoRA; needs a CUDA GPU)"
    )
    load_in_4bit: bool = _option(
        False, "load the base model 4-bit NF4 with bitsandbytes (QLoRA; needs a CUDA GPU)"
    )
    dtype: str = _option(
        "auto",
        "weights dtype: auto (float32 on CPU, bfloat16 on GPUs that have it), float32, bfloat16, float16",
    )
    trust_remote_code: bool = _option(
        False, "allow the model repository's own code (only for models you trust)"
    )
    # reporting
    show_examples: int = _option(
        3, "held-out prompts answered by the base and the fine-tuned model at the end"
    )
    example_max_new_tokens: int = _option(48, "tokens generated per example answer")
    seed: int = _option(42, "random seed (data split, shuffling, adapter initialisation)")

    def target_modules(self) -> list[str]:
        """``lora_target_modules`` parsed from a JSON list or a comma list."""
        text = self.lora_target_modules.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"--lora_target_modules: not a JSON list ({error.msg}); got {text!r}. "
                    'Write \'["q_proj","v_proj"]\' or q_proj,v_proj'
                ) from None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"--lora_target_modules must list module names as strings; got {text!r}")
            names = value
        else:
            names = [part.strip() for part in text.split(",")]
        names = [n for n in names if n]
        if not names:
            raise ValueError(f"--lora_target_modules names no module; got {text!r}. Example: q_proj,v_proj")
        return names

    def problems(self) -> list[str]:
        """Every invalid value, one message each (empty when all is well)."""
        problems = []
        if not 0 <= self.inhibition < 1:
            problems.append(f"--inhibition (--threshold_ratio_inhi) must be in [0, 1); got {self.inhibition}")
        for name in ("lora_r", "batch_size", "micro_batch_size", "cutoff_len"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be at least 1; got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
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
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(f"--dtype must be auto, float32, bfloat16 or float16; got {self.dtype!r}")
        if self.max_records < 0:
            problems.append(f"--max_records must be ≥ 0; got {self.max_records}")
        try:
            self.target_modules()
        except ValueError as error:
            problems.append(str(error))
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
    "output_dir": "outputs/ina-finetune-smollm2",
}
QUICK_TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 24,
    "logging_steps": 2,
    "eval_steps": 12,
    "save_steps": 12,
}


def fields() -> dict[str, dataclasses.Field]:
    """FinetuneArguments' fields by name."""
    return {f.name: f for f in dataclasses.fields(FinetuneArguments)}
