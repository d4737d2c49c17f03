"""Instruction fine-tuning with InA on the Hugging Face Trainer (one process, torchrun, accelerate, DeepSpeed, FSDP).

    summary = finetune(FinetuneArguments(base_model="path/to/model", data_path="data.json"), ["--max_steps", "100"])

writes to ``output_dir``: ``checkpoint-*`` folders (resumable), the final adapter (``adapter_config.json``,
``adapter_model.safetensors``, ``ina_prompt.json``), ``training_summary.json`` and ``loss_curve.png``.
Each file is written by one process only, through a temporary file renamed into place. The run itself
(build, train, time, save, verify) is `ina.foundation.harness`; this module is the recipe.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ina.finetune import launch
from ina.finetune.arguments import FinetuneArguments, FinetuneError, resolve, training_arguments
from ina.finetune.dataset import prepare_data
from ina.finetune.report import format_report, heldout_answers, plot_losses
from ina.foundation import harness
from ina.foundation.harness import errors_as
from ina.foundation.prompts import PROMPT_FILE

__all__ = [
    "CURVE_FILE",
    "SUMMARY_FILE",
    "FinetuneArguments",
    "FinetuneError",
    "add_adapter",
    "check_deepspeed_config",
    "finetune",
    "load_model",
    "quantization_config",
    "resolve",
    "training_arguments",
]

SUMMARY_FILE = "training_summary.json"
CURVE_FILE = "loss_curve.png"
_logger = logging.getLogger(__name__)


def check_deepspeed_config(deepspeed: Any) -> None:
    """Refuse a ZeRO-3 config that would save an empty adapter (weights not gathered at save time)."""
    with errors_as(FinetuneError):
        harness.check_deepspeed_config(deepspeed)


def base_model_name(finetune: FinetuneArguments) -> str:
    """``--base_model``, or the embedded SmolLM2 folder (converted on first use) when it is empty."""
    from ina.foundation.models import resolve_base_model

    return resolve_base_model(finetune.base_model)


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


def load_model(finetune: FinetuneArguments) -> Any:
    """The base causal LM (bitsandbytes-quantized with ``--load_in_8bit`` / ``--load_in_4bit``)."""
    from transformers import AutoModelForCausalLM

    from ina.foundation.models import load_pretrained, resolve_dtype

    kwargs: dict[str, Any] = {"trust_remote_code": finetune.trust_remote_code}
    quantization = quantization_config(finetune)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    kwargs["dtype"] = resolve_dtype(finetune.dtype)
    model = load_pretrained(AutoModelForCausalLM, base_model_name(finetune), "--base_model", **kwargs)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


def add_adapter(model: Any, finetune: FinetuneArguments) -> Any:
    """``model`` wrapped in a trainable InA adapter configured by ``finetune``."""
    from ina.foundation.adapters import inhibition_config

    return harness.peft_model(model, inhibition_config(finetune, model, "CAUSAL_LM"))


def _inputs(options: FinetuneArguments) -> dict[str, str | None]:
    """What the run reads, by flag (the embedded defaults' folders when a flag is empty)."""
    from ina.embedded import instruct_data, smollm

    return {
        "--base_model": options.base_model or str(smollm.model_dir()),
        "--data_path": options.data_path or str(instruct_data.data_dir()),
        "--config": options.config,
        "--prompt_template_name": name if (name := options.prompt_template_name).endswith(".json") else None,
    }


def finetune(
    finetune_args: FinetuneArguments,
    training_tokens: list[str] | None = None,
    callbacks: list[Any] | None = None,
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune an InA adapter; returns the training summary (also written to ``training_summary.json``).

    Progress and the end-of-run report go to ``log`` (default: this module's logger), on the main process only.
    """
    with errors_as(FinetuneError):
        return _finetune(finetune_args, list(training_tokens or []), callbacks, log or _logger.info)


def _finetune(
    options: FinetuneArguments, tokens: list[str], callbacks: list[Any] | None, log: Callable[[str], Any]
) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForSeq2Seq

    from ina.foundation.models import load_tokenizer

    started = time.time()
    args, notes = launch.checked_training_arguments(options, tokens, cuda=torch.cuda.is_available())
    main = args.process_index == 0
    say = log if main else (lambda *_: None)
    quantization_config(options)  # no GPU or no bitsandbytes: say so before anything else
    resume = harness.resume_target(options.resume_from_checkpoint, args.output_dir)
    # never into the inputs; another run's folder is refused (nothing touched) unless resumed or
    # --overwrite_output_dir is given
    try:
        harness.check_output_dir(args.output_dir, _inputs(options), resume)
        stale = harness.stale_checkpoints(args.output_dir, resume, options.overwrite_output_dir)
    except harness.TrainingError as error:  # said once, by the first process
        raise FinetuneError(launch.stop_quietly(str(error))) from None
    for note in notes:
        say(note)
    if not options.base_model or not options.data_path:
        # one process per machine converts/builds the embedded defaults; the others then find them ready
        with args.main_process_first(desc="preparing the embedded defaults"):
            base_model_name(options)
            if not options.data_path:
                from ina.embedded.instruct_data import ensure_dataset

                ensure_dataset()
    # data first: malformed records stop the run before a large model is loaded
    base_name = base_model_name(options)
    tokenizer = load_tokenizer(base_name, "--base_model", trust_remote_code=options.trust_remote_code)
    data = prepare_data(options, tokenizer, say)
    if stale and main:
        say(f"--overwrite_output_dir: removing the previous run's {', '.join(p.name for p in stale)}")
        for folder in stale:
            shutil.rmtree(folder)
    torch.manual_seed(options.seed)
    model = add_adapter(load_model(options), options)
    trainable, total = harness.trainable_parameters(model)
    say(
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    )
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True)
    trainer = harness.build_trainer(
        model,
        args,
        data.train,
        data.validation,
        tokenizer=tokenizer,
        data_collator=collator,
        callbacks=callbacks,
    )
    counts = data.counts
    say(
        f"training on {counts['train_examples']} examples ({counts['val_examples']} held out), template "
        f"{data.template.name!r}, {args.world_size} process(es)"
    )
    # The base model's validation loss is measured after training with the adapter switched off (the
    # same model as before training, since B starts at zero): an evaluate() before train() would make
    # accelerate register the bare model and skip wrapping it in DistributedDataParallel.
    run = harness.train(trainer, resume=resume)
    val_before = val_after = None
    if data.validation is not None:
        last = trainer.state.log_history[-2:]  # the step's eval log, then train()'s summary
        done = [
            e["eval_loss"] for e in last if "eval_loss" in e and e.get("step") == trainer.state.global_step
        ]
        val_after = done[-1] if done else trainer.evaluate()["eval_loss"]
        with trainer.accelerator.unwrap_model(trainer.model).disable_adapter():
            val_before = trainer.evaluate(metric_key_prefix="base")["base_loss"]

    prompt_file = {
        "template": data.template.to_json(),
        "add_eos_token": options.add_eos_token,
        "cutoff_len": options.cutoff_len,
    }
    checks = harness.save_adapter(trainer, files={PROMPT_FILE: prompt_file})
    examples = []
    answered = options.answered_examples()
    if main and answered and not harness.is_sharded(trainer) and data.heldout:
        model = trainer.accelerator.unwrap_model(trainer.model)
        heldout = data.heldout[: answered if answered > 0 else None]
        examples = heldout_answers(model, tokenizer, data.template, heldout, options.example_max_new_tokens)
    summary = {
        "base_model": base_name,
        "adapter": str(Path(args.output_dir).resolve()),
        "prompt_template": data.template.name,
        "inhibition": options.inhibition,
        "activation": options.activation,
        "lora_r": options.lora_r,
        "lora_alpha": options.lora_alpha,
        "lora_dropout": options.lora_dropout,
        "target_modules": options.target_modules(),
        "train_on_inputs": options.train_on_inputs,
        "cutoff_len": options.cutoff_len,
        **counts,
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "epochs": trainer.state.epoch,
        "resumed_from": str(resume) if resume else None,
        "train_loss": run.train_loss,
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
        harness.record(out, summary, SUMMARY_FILE)
        plot_losses(trainer.state.log_history, val_before, out / CURVE_FILE)
        say(format_report(summary, options.show_examples))
    trainer.accelerator.wait_for_everyone()
    if main and options.eval:
        # `ina eval` in a process of its own (rooms do not import rooms), GPU memory freed
        from ina.foundation.commands import run_ina

        del trainer, model
        torch.cuda.empty_cache()
        argv = ["eval", "--adapter", f"finetuned={args.output_dir}", "--base_model", base_name]
        argv += ["--output_dir", str(Path(args.output_dir) / "eval")]
        argv += ["--limit", str(options.eval_limit)] if options.eval_limit else []
        if run_ina(argv):
            raise FinetuneError(f"--eval: `ina {' '.join(argv)}` failed (see above); the adapter is saved")
    return summary
