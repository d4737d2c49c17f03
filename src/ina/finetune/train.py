"""Instruction fine-tuning with InA on the Hugging Face Trainer (one process, torchrun, accelerate, DeepSpeed, FSDP).

    summary = finetune(FinetuneArguments(base_model="path/to/model", data_path="data.json"), ["--max_steps", "100"])

writes to ``output_dir``: ``checkpoint-*`` folders (resumable), the final adapter (``adapter_config.json``,
``adapter_model.safetensors``, ``ina_prompt.json``), ``training_summary.json`` and ``loss_curve.png``.
Each file is written by one process only, through a temporary file renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ina.finetune.arguments import QUICK_DEFAULTS, QUICK_TRAINING_DEFAULTS, FinetuneArguments
from ina.finetune.data import IGNORE_INDEX, DataError, encode, load_data, report_bad_records
from ina.foundation.prompts import PROMPT_FILE, PromptTemplate

SUMMARY_FILE = "training_summary.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
CURVE_FILE = "loss_curve.png"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class FinetuneError(RuntimeError):
    """The run cannot go on; the message says which option to change."""


# ----------------------------------------------------------------------------------------------- arguments


def training_arguments(finetune: FinetuneArguments, extra: list[str], world_size: int | None = None) -> Any:
    """The `TrainingArguments`: values derived from ``finetune`` overridden by ``extra`` CLI tokens."""
    import torch
    from transformers import HfArgumentParser, TrainingArguments

    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = max(1, finetune.batch_size // finetune.micro_batch_size // world)
    derived: dict[str, Any] = {
        "output_dir": finetune.output_dir,
        "per_device_train_batch_size": finetune.micro_batch_size,
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
    if world > 1:
        derived["ddp_find_unused_parameters"] = False
        if not torch.cuda.is_available():
            # accelerate only runs CPU processes as one data-parallel job when told they are CPU processes
            derived["ddp_backend"] = "gloo"
            derived["use_cpu"] = True
    tokens = _to_tokens(derived) + extra
    parser = HfArgumentParser(TrainingArguments)
    try:
        (args, remaining) = parser.parse_args_into_dataclasses(args=tokens, return_remaining_strings=True)
    except SystemExit:
        raise FinetuneError(
            f"invalid TrainingArguments flags among {extra} (see the message above)"
        ) from None
    if remaining:
        raise FinetuneError(
            f"unrecognized arguments: {' '.join(remaining)} (neither an `ina finetune` flag, see "
            "`ina finetune --help`, nor a transformers.TrainingArguments field)"
        )
    return args


def _to_tokens(values: dict[str, Any]) -> list[str]:
    tokens: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            tokens += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            tokens += [f"--{key}", json.dumps(value)]
        else:
            tokens += [f"--{key}", str(value)]
    return tokens


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A YAML config's keys split into `FinetuneArguments` values and TrainingArguments CLI tokens."""
    from ina.finetune.arguments import fields

    own = fields()
    aliases = {alias.lstrip("-"): name for name, f in own.items() for alias in f.metadata.get("aliases", ())}
    mine: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in config.items():
        name = aliases.get(key, key)
        if name in own:
            if name == "lora_target_modules" and isinstance(value, list):
                value = ",".join(value)
            mine[name] = value
        else:
            rest[key] = value
    return mine, _to_tokens(rest)


def resolve(given: dict[str, Any], extra: list[str]) -> tuple[FinetuneArguments, list[str]]:
    """`FinetuneArguments` and Trainer tokens from the flags given on the command line (and ``--config``).

    Priority, lowest first: defaults, quick defaults for the embedded model, the config file, the flags.
    """
    config_values: dict[str, Any] = {}
    config_tokens: list[str] = []
    config_path = given.get("config") or ""
    if config_path:
        import yaml

        path = Path(config_path)
        if not path.is_file():
            raise FinetuneError(f"--config {config_path!r}: no such file")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise FinetuneError(
                f"--config {config_path!r} must hold a mapping of option: value; got {type(loaded).__name__}"
            )
        config_values, config_tokens = split_config(loaded)
    values = {**config_values, **given}
    tokens = config_tokens + list(extra)
    if not values.get("base_model"):
        values = {**QUICK_DEFAULTS, **values}
        flags = {token.lstrip("-").split("=")[0] for token in tokens if token.startswith("--")}
        tokens = _to_tokens({k: v for k, v in QUICK_TRAINING_DEFAULTS.items() if k not in flags}) + tokens
    try:
        finetune = FinetuneArguments(**values)
    except TypeError as error:
        raise FinetuneError(f"--config {config_path!r}: {error}") from None
    problems = finetune.problems()
    if problems:
        raise FinetuneError("invalid options:\n" + "\n".join(f"  - {p}" for p in problems))
    return finetune, tokens


# --------------------------------------------------------------------------------------------------- model


def base_model_name(finetune: FinetuneArguments) -> str:
    """``--base_model``, or the embedded SmolLM2 folder (converted on first use) when it is empty."""
    if finetune.base_model:
        return finetune.base_model
    from ina.embedded.smollm import ensure_model

    return str(ensure_model())


def load_tokenizer(finetune: FinetuneArguments) -> Any:
    """The base model's tokenizer, with a padding token (EOS when it has none)."""
    from transformers import AutoTokenizer

    name = base_model_name(finetune)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=finetune.trust_remote_code)
    except OSError as error:
        raise FinetuneError(
            f"--base_model {name!r}: cannot load its tokenizer ({str(error)[:300]}). Give a local model folder "
            "(config.json + weights + tokenizer) or, online, a hub name."
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token else tokenizer.unk_token
    return tokenizer


def load_model(finetune: FinetuneArguments) -> Any:
    """The base causal LM (bitsandbytes-quantized with ``--load_in_8bit`` / ``--load_in_4bit``)."""
    from transformers import AutoModelForCausalLM

    name = base_model_name(finetune)
    quantized = finetune.load_in_8bit or finetune.load_in_4bit
    kwargs: dict[str, Any] = {"trust_remote_code": finetune.trust_remote_code}
    if quantized:
        kwargs["quantization_config"] = quantization_config(finetune)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    kwargs["dtype"] = _dtype(finetune.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as error:
        raise FinetuneError(
            f"--base_model {name!r}: cannot load it ({str(error)[:300]}). Give a local model folder "
            "(config.json + weights + tokenizer) or, online, a hub name."
        ) from None
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


def quantization_config(finetune: FinetuneArguments) -> Any:
    """The bitsandbytes config of ``--load_in_8bit`` / ``--load_in_4bit`` (None without them), or why not here."""
    if not (finetune.load_in_8bit or finetune.load_in_4bit):
        return None
    import torch

    flag = "--load_in_8bit" if finetune.load_in_8bit else "--load_in_4bit"
    if not torch.cuda.is_available():
        raise FinetuneError(
            f"{flag} trains on a bitsandbytes-quantized base (QLoRA), which needs a CUDA GPU; this machine has "
            "none. Drop the flag to train the full-precision base on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise FinetuneError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes") from None
    return BitsAndBytesConfig(
        load_in_8bit=finetune.load_in_8bit,
        load_in_4bit=finetune.load_in_4bit,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


def _dtype(name: str) -> Any:
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def add_adapter(model: Any, finetune: FinetuneArguments) -> Any:
    """``model`` wrapped in a trainable InA adapter configured by ``finetune``."""
    from peft import get_peft_model

    from ina import InAConfig

    targets = finetune.target_modules()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"}
        )
        raise FinetuneError(
            f"--lora_target_modules: {missing} not found in the model; its linear modules are {linear}. "
            "Example for LLaMA-style models: q_proj,v_proj; for BLOOM: query_key_value"
        )
    config = InAConfig(
        r=finetune.lora_r,
        lora_alpha=finetune.lora_alpha,
        lora_dropout=finetune.lora_dropout,
        target_modules=targets,
        inhibition=finetune.inhibition,
        activation=finetune.activation,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


# ---------------------------------------------------------------------------------------------------- data


def choose_template(finetune: FinetuneArguments, conversations: list[Any]) -> PromptTemplate:
    """The prompt template named by ``--prompt_template_name`` (``auto``: chat for conversation data)."""
    name = finetune.prompt_template_name
    if name == "auto":
        name = "chat" if any(c.format != "alpaca" for c in conversations) else "alpaca"
    return PromptTemplate.load(name)


def prepare_data(
    finetune: FinetuneArguments, tokenizer: Any, log: Any = print
) -> tuple[Any, Any, PromptTemplate, dict[str, Any]]:
    """Train and validation `datasets.Dataset`s, the template, and counts for the summary.

    Stops with `FinetuneError` on malformed records unless ``--skip_bad_records``.
    """
    import datasets

    data_path = finetune.data_path
    if not data_path:
        from ina.embedded.instruct_data import ensure_dataset

        data_path = str(ensure_dataset())
    try:
        loaded = load_data(data_path)
    except DataError as error:
        raise FinetuneError(str(error)) from None
    conversations = loaded.conversations
    if finetune.max_records:
        conversations = conversations[: finetune.max_records]
    template = choose_template(finetune, conversations)
    if template.chat and not getattr(tokenizer, "chat_template", None):
        raise FinetuneError(
            f"--prompt_template_name chat (chosen for {'conversation data' if finetune.prompt_template_name == 'auto' else 'this run'}) "
            "needs a tokenizer with a chat template, and this model's has none; convert the data to Alpaca records "
            "or use a model with a chat template"
        )
    bad = list(loaded.bad)
    usable = []
    for conversation in conversations:
        problem = template.problem(conversation, tokenizer)
        if problem:
            from ina.finetune.data import BadRecord

            bad.append(BadRecord(conversation.location, problem))
        else:
            usable.append(conversation)
    if bad:
        log(report_bad_records(bad, data_path, finetune.skip_bad_records))
        if not finetune.skip_bad_records:
            raise FinetuneError(
                f"{len(bad)} malformed record(s) in --data_path {data_path}; fix them or pass --skip_bad_records"
            )
    if not usable:
        raise FinetuneError(f"--data_path {data_path}: no usable record to train on")

    encoded, locations = [], []
    no_answer = 0
    for conversation in usable:
        example = encode(
            conversation,
            template,
            tokenizer,
            finetune.cutoff_len,
            finetune.train_on_inputs,
            finetune.add_eos_token,
        )
        if all(label == IGNORE_INDEX for label in example["labels"]):
            no_answer += 1
            continue
        encoded.append(example)
        locations.append(conversation)
    if no_answer:
        log(
            f"dropped {no_answer} record(s) whose answer starts after --cutoff_len={finetune.cutoff_len} tokens "
            "(raise --cutoff_len to keep them)"
        )
    if not encoded:
        raise FinetuneError(
            f"no record has answer tokens within --cutoff_len={finetune.cutoff_len}; raise it"
        )

    order = list(range(len(encoded)))
    random.Random(finetune.seed).shuffle(order)
    n_val = _validation_count(finetune.val_set_size, len(encoded), log)
    val_index, train_index = order[:n_val], order[n_val:]
    train = datasets.Dataset.from_list([encoded[i] for i in train_index])
    val = datasets.Dataset.from_list([encoded[i] for i in val_index]) if n_val else None
    heldout = [locations[i] for i in val_index]
    counts = {
        "data_path": data_path,
        "files": loaded.files,
        "records_read": len(loaded.conversations) + len(loaded.bad),
        "records_skipped": len(bad),
        "records_too_long": no_answer,
        "train_examples": len(train_index),
        "val_examples": n_val,
        "formats": sorted({c.format for c in usable}),
        "heldout": heldout,
    }
    return train, val, template, counts


def _validation_count(size: float, total: int, log: Any) -> int:
    wanted = round(size * total) if 0 < size < 1 else int(size)
    cap = total // 5
    if wanted > cap:
        log(f"--val_set_size {size:g} is more than 20% of the {total} examples; holding out {cap} instead")
        return cap
    return wanted


# ---------------------------------------------------------------------------------------------- the run


def finetune(
    finetune_args: FinetuneArguments,
    training_tokens: list[str] | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune an InA adapter; returns the training summary (also written to ``training_summary.json``)."""
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer

    started = time.time()
    check_deepspeed_config(_deepspeed_option(training_tokens or []))
    args = training_arguments(finetune_args, list(training_tokens or []))
    main = args.process_index == 0
    log = print if main else (lambda *a, **k: None)

    quantization_config(finetune_args)  # no GPU or no bitsandbytes: say so before anything else
    resume = _resume_target(finetune_args.resume_from_checkpoint, args.output_dir)
    if not finetune_args.base_model or not finetune_args.data_path:
        # one process per machine converts/builds the embedded defaults; the others then find them ready
        with args.main_process_first(desc="preparing the embedded defaults"):
            base_model_name(finetune_args)
            if not finetune_args.data_path:
                from ina.embedded.instruct_data import ensure_dataset

                ensure_dataset()
    # data first: malformed records stop the run before a large model is loaded
    base_name = base_model_name(finetune_args)
    tokenizer = load_tokenizer(finetune_args)
    train, val, template, counts = prepare_data(finetune_args, tokenizer, log)
    model = load_model(finetune_args)
    if args.gradient_checkpointing:
        model.enable_input_require_grads()
    if val is None:
        from transformers.trainer_utils import IntervalStrategy

        args.eval_strategy = IntervalStrategy.NO
    torch.manual_seed(finetune_args.seed)
    model = add_adapter(model, finetune_args)
    if main:
        model.print_trainable_parameters()
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    log(
        f"training on {counts['train_examples']} examples ({counts['val_examples']} held out), template "
        f"{template.name!r}, {args.world_size} process(es)"
    )
    # The base model's validation loss is measured after training with the adapter switched off (the
    # same model as before training, since B starts at zero): an evaluate() before train() would make
    # accelerate register the bare model and skip wrapping it in DistributedDataParallel.
    result = trainer.train(resume_from_checkpoint=resume)
    val_before = val_after = None
    if val is not None:
        last = trainer.state.log_history[-2:]  # the step's eval log, then train()'s summary
        done = [
            e["eval_loss"] for e in last if "eval_loss" in e and e.get("step") == trainer.state.global_step
        ]
        val_after = done[-1] if done else trainer.evaluate()["eval_loss"]
        with trainer.accelerator.unwrap_model(trainer.model).disable_adapter():
            val_before = trainer.evaluate(metric_key_prefix="base")["base_loss"]

    checks = save_adapter(trainer, template, finetune_args, val)
    examples = []
    sharded = is_sharded(trainer)
    if main and finetune_args.show_examples and not sharded and counts["heldout"]:
        from ina.finetune.generate import generate_answers

        heldout = counts["heldout"][: finetune_args.show_examples]
        prompts = [_heldout_prompt(c) for c in heldout]
        unwrapped = trainer.accelerator.unwrap_model(trainer.model).eval()  # no dropout while answering
        with unwrapped.disable_adapter():
            base_answers = generate_answers(
                unwrapped, tokenizer, template, prompts, finetune_args.example_max_new_tokens
            )
        tuned_answers = generate_answers(
            unwrapped, tokenizer, template, prompts, finetune_args.example_max_new_tokens
        )
        for conversation, (instruction, input_text), base, tuned in zip(
            heldout, prompts, base_answers, tuned_answers, strict=True
        ):
            examples.append(
                {
                    "location": conversation.location,
                    "instruction": instruction,
                    "input": input_text,
                    "reference": conversation.messages[-1]["content"],
                    "base": base,
                    "finetuned": tuned,
                }
            )
    summary = {
        "base_model": base_name,
        "adapter": str(Path(args.output_dir).resolve()),
        "prompt_template": template.name,
        "inhibition": finetune_args.inhibition,
        "activation": finetune_args.activation,
        "lora_r": finetune_args.lora_r,
        "lora_alpha": finetune_args.lora_alpha,
        "lora_dropout": finetune_args.lora_dropout,
        "target_modules": finetune_args.target_modules(),
        "train_on_inputs": finetune_args.train_on_inputs,
        "cutoff_len": finetune_args.cutoff_len,
        **{k: v for k, v in counts.items() if k != "heldout"},
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "epochs": trainer.state.epoch,
        "resumed_from": str(resume) if resume else None,
        "train_loss": result.training_loss,
        "val_loss_base": val_before,
        "val_loss_finetuned": val_after,
        "effective_batch_size": args.per_device_train_batch_size
        * args.gradient_accumulation_steps
        * args.world_size,
        "learning_rate": args.learning_rate,
        "runtime_s": round(time.time() - started, 1),
        **checks,
        "examples": examples,
        "log_history": trainer.state.log_history,
    }
    if main:
        out = Path(args.output_dir)
        write_json_atomic(out / SUMMARY_FILE, summary)
        plot_losses(trainer.state.log_history, val_before, out / CURVE_FILE)
        print_report(summary)
    trainer.accelerator.wait_for_everyone()
    return summary


def _deepspeed_option(tokens: list[str]) -> str | None:
    value = None
    for index, token in enumerate(tokens):
        if token == "--deepspeed" and index + 1 < len(tokens):
            value = tokens[index + 1]
        elif token.startswith("--deepspeed="):
            value = token.split("=", 1)[1]
    return value


def _heldout_prompt(conversation: Any) -> tuple[str, str]:
    if conversation.alpaca is not None:
        return conversation.alpaca["instruction"], conversation.alpaca["input"]
    user = [m["content"] for m in conversation.messages if m["role"] == "user"]
    return (user[0] if user else ""), ""


def _resume_target(value: str, output_dir: str) -> str | bool | None:
    if not value or value.lower() in ("false", "no", "none"):
        return None
    if value.lower() in ("true", "last", "latest"):
        from transformers.trainer_utils import get_last_checkpoint

        if not Path(output_dir).is_dir() or get_last_checkpoint(output_dir) is None:
            raise FinetuneError(
                f"--resume_from_checkpoint {value}: no checkpoint-* folder in --output_dir {output_dir}; "
                "give a checkpoint folder or start without the flag"
            )
        return True
    if not Path(value).is_dir():
        raise FinetuneError(f"--resume_from_checkpoint {value!r}: no such checkpoint folder")
    return value


# ---------------------------------------------------------------------------------------------- saving


def save_adapter(
    trainer: Any, template: PromptTemplate, finetune_args: FinetuneArguments, val: Any
) -> dict[str, Any]:
    """Save the final adapter into ``output_dir`` (atomically, once) and check it is complete.

    Every process calls ``trainer.save_model`` (DeepSpeed ZeRO-3 and FSDP gather the sharded weights
    there); only the main process writes. The saved file is then reloaded as a second adapter and must
    give the trained adapter's logits exactly, and every process's adapter weights must agree.
    """
    import torch

    args = trainer.args
    out = Path(args.output_dir)
    main = args.process_index == 0
    staging = out / ".adapter-staging"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_fsdp_enabled:
        # a sharded state dict would save each process's shard; the adapter must be whole
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    checks: dict[str, Any] = {}
    sharded = is_sharded(trainer)
    checksum = None if sharded else _adapter_checksum(model)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and checksum is not None:
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, checksum)
    else:
        gathered = [checksum]
    if checksum is not None:
        checks["adapter_checksums"] = gathered
        if any(c != gathered[0] for c in gathered):
            raise FinetuneError(f"the processes ended with different adapter weights: checksums {gathered}")
    if main:
        write_json_atomic(
            staging / PROMPT_FILE,
            {
                "template": template.to_json(),
                "add_eos_token": finetune_args.add_eos_token,
                "cutoff_len": finetune_args.cutoff_len,
            },
        )
        checks["adapter_tensors"] = verify_adapter_files(staging, model)
        if not sharded:
            checks["reload_max_abs_logit_diff"] = _reload_logit_diff(model, staging, val, trainer)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        staging.rmdir()
    trainer.accelerator.wait_for_everyone()
    return checks


def is_sharded(trainer: Any) -> bool:
    """Whether model weights are split across processes (DeepSpeed ZeRO-3 or FSDP), so no process can run it alone."""
    if trainer.is_fsdp_enabled:
        return True
    if trainer.is_deepspeed_enabled:
        return int(trainer.accelerator.state.deepspeed_plugin.zero_stage) == 3
    return False


def check_deepspeed_config(deepspeed: Any) -> None:
    """Refuse a ZeRO-3 config that would save an empty adapter (weights not gathered at save time)."""
    if not deepspeed:
        return
    config = (
        json.loads(deepspeed)
        if isinstance(deepspeed, str) and deepspeed.lstrip().startswith("{")
        else deepspeed
    )
    if not isinstance(config, dict):
        path = Path(str(deepspeed))
        if not path.is_file():
            raise FinetuneError(f"--deepspeed {deepspeed!r}: no such DeepSpeed config file")
        config = json.loads(path.read_text(encoding="utf-8"))
    zero = config.get("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise FinetuneError(
            f"--deepspeed {deepspeed!r}: ZeRO stage 3 without `stage3_gather_16bit_weights_on_model_save: true` saves "
            "an empty adapter (each process holds only a shard); set it to true under zero_optimization "
            "(see examples/accelerate/ds_zero3.json)"
        )


def _adapter_checksum(model: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def adapter_file_checksum(path: str | os.PathLike[str]) -> dict[str, float]:
    """Sum of absolute values per tensor of a saved adapter (for comparing adapters in tests and tools)."""
    from safetensors.torch import load_file

    return {
        k: float(v.double().abs().sum())
        for k, v in sorted(load_file(str(Path(path) / "adapter_model.safetensors")).items())
    }


def verify_adapter_files(folder: Path, model: Any) -> int:
    """Check the saved adapter has a non-empty A and B for every adapted module; returns the tensor count."""
    from safetensors.torch import load_file

    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.is_file() or not (folder / "adapter_config.json").is_file():
        raise FinetuneError(
            f"saving the adapter wrote no {weights_file.name} / adapter_config.json in {folder}"
        )
    tensors = load_file(str(weights_file))
    expected = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A.default")) * 2
    empty = [name for name, t in tensors.items() if t.numel() == 0]
    if empty or len(tensors) < expected:
        raise FinetuneError(
            f"the saved adapter is incomplete: {len(tensors)} tensors for {expected} expected, empty: {empty[:5]}. "
            "Under DeepSpeed ZeRO-3 set `stage3_gather_16bit_weights_on_model_save: true` in the DeepSpeed config"
        )
    return len(tensors)


def _reload_logit_diff(model: Any, folder: Path, val: Any, trainer: Any) -> float:
    """Load the saved adapter next to the trained one and compare their logits on a few examples."""
    import torch

    from ina import load_adapter

    rows = val if val is not None and len(val) else trainer.train_dataset
    batch = trainer.data_collator([rows[i] for i in range(min(4, len(rows)))])
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            trained = model(**inputs).logits
            load_adapter(model, folder, adapter_name="ina_reloaded")
            model.set_adapter("ina_reloaded")
            reloaded = model(**inputs).logits
    finally:
        model.set_adapter("default")
        if "ina_reloaded" in model.peft_config:
            model.delete_adapter("ina_reloaded")
        model.train(was_training)
    difference = float((trained - reloaded).abs().max())
    # same weights, same kernels: identical on CPU; GPU kernels may pick another reduction order
    tolerance = 0.0 if device.type == "cpu" else 1e-3 * float(trained.abs().max())
    if difference > tolerance:
        raise FinetuneError(
            f"the saved adapter in {folder} does not reproduce the trained model: max |Δlogit| = {difference}"
        )
    return difference


def _publish(temporary: str, path: Path) -> None:
    """Give a finished temporary file normal permissions (mkstemp makes it private) and rename it into place."""
    os.chmod(temporary, 0o666 & ~_UMASK)
    os.replace(temporary, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
    _publish(temporary, path)


def write_jsonl_atomic(path: str | os.PathLike[str], rows: list[Any]) -> None:
    """Write ``rows`` as JSON Lines to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    _publish(temporary, path)


def plot_losses(log_history: list[dict[str, Any]], val_before: float | None, path: Path) -> None:
    """Training and validation loss against the optimizer step, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    val = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    figure, axes = plt.subplots(figsize=(6, 4))
    if train:
        axes.plot(*zip(*train, strict=True), label="train", color="tab:blue")
    if val:
        axes.plot(*zip(*val, strict=True), "o-", label="validation", color="tab:orange")
    if val_before is not None:
        axes.axhline(val_before, linestyle=":", color="gray", label="validation, base model")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title("InA fine-tuning")
    axes.legend()
    figure.tight_layout()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    _publish(temporary, path)


def print_report(summary: dict[str, Any], stream: Any = None) -> None:
    """The end-of-run report: held-out answers before/after and the validation losses."""
    stream = stream or sys.stdout
    write = lambda text="": print(text, file=stream)  # noqa: E731
    for index, example in enumerate(summary["examples"], start=1):
        write(f"\n=== held-out prompt {index} ({example['location']})")
        write(f"instruction: {example['instruction']}")
        if example["input"]:
            write(f"input:       {example['input']}")
        write(f"reference:   {example['reference']}")
        write(f"base:        {example['base']}")
        write(f"fine-tuned:  {example['finetuned']}")
    before, after = summary["val_loss_base"], summary["val_loss_finetuned"]
    write()
    if before is not None and after is not None:
        change = (after - before) / before * 100 if before else math.nan
        write(f"validation loss: base {before:.4f} → fine-tuned {after:.4f} ({change:+.1f}%)")
    write(
        f"adapter: {summary['adapter']} (step {summary['global_step']}, template {summary['prompt_template']!r})"
    )
