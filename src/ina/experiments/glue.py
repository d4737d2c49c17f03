"""`ina glue`: fine-tune an InA adapter (and the classifier head) on a GLUE task with the HF Trainer.

Mirrors Hugging Face's ``run_glue.py``: the same flags and any `TrainingArguments` flag, the official
metric of each task, ``eval_results.json`` in the output folder. The adapter is saved with the trained
classifier (PEFT's ``modules_to_save`` for ``SEQ_CLS``) and loads back with ``ina.load_adapter``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ina.embedded.vader import DATASET_NAME as VADER_DATASET
from ina.experiments import metrics
from ina.experiments.arguments import GlueArguments
from ina.experiments.common import (
    TRAINER_DEFAULTS,
    ExperimentError,
    adapter_fields,
    claim_output_dir,
    load_tokenizer,
    replace_previous_run,
    timing_fields,
    uses_torch_threads,
)
from ina.experiments.glue_data import GlueTask, check_rows, encode, load_splits, read_rows, resolve
from ina.experiments.heldout import DEV_SPLIT, carve_dev, evaluation_curve, test_files, trainer_state
from ina.foundation import harness
from ina.foundation.adapters import inhibition_config
from ina.foundation.arguments import flag_given
from ina.foundation.models import load_pretrained

GLUE_EPOCHS = 10  # the authors' recipe
# The offline default (no task, model or data named): small enough for a 4 x 3 sweep on 2 CPU cores.
DEMO_DATA = {"max_train_samples": 800, "max_eval_samples": 500}
# LoRA-style adapters need a larger step than full fine-tuning to learn in a few hundred steps.
DEMO_TRAINER = {"num_train_epochs": 2, "learning_rate": 1e-3}


def compute_metrics(task: GlueTask, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official metrics from model outputs: ``(n, num_labels)`` logits or ``(n, 1)`` scores."""
    if task.is_regression:
        scores = logits.reshape(-1)
        return {"pearson": metrics.pearson(scores, labels), "spearman": metrics.spearman(scores, labels)}
    predictions = logits.argmax(axis=-1)
    scorers = {
        "accuracy": metrics.accuracy,
        "f1": metrics.f1_binary,
        "matthews_correlation": metrics.matthews_corrcoef,
    }
    return {name: scorers[name](predictions, labels) for name in task.metrics if name in scorers}


@uses_torch_threads
def run(arguments: GlueArguments, training_flags: list[str]) -> dict[str, Any]:
    """Train and evaluate one adapter; returns (and writes to ``result.json``, last) the run's record.

    ``training_flags`` are `transformers.TrainingArguments` flags (``--num_train_epochs 3``, ``--seed 1``).
    """
    task, dataset, model_name = resolve(arguments)
    demo = dataset == VADER_DATASET and not arguments.model_name_or_path
    if demo:
        arguments = replace(
            arguments,
            max_train_samples=arguments.max_train_samples or DEMO_DATA["max_train_samples"],
            max_eval_samples=arguments.max_eval_samples or DEMO_DATA["max_eval_samples"],
        )
    output_dir = arguments.output_dir or f"outputs/glue-{task.name}-inhibition{arguments.inhibition:g}"
    recipe = DEMO_TRAINER if demo else {"num_train_epochs": GLUE_EPOCHS}
    training = harness.training_arguments(
        training_flags, output_dir, {**TRAINER_DEFAULTS, **recipe}, command="ina glue"
    )
    tests = test_files(arguments.test_file, reserved=task.validation_splits)
    files = ("data_dir", "train_file", "validation_file", "validation_mismatched_file")
    inputs = {
        "--model_name_or_path": model_name,
        "--tokenizer_name": arguments.tokenizer_name,
        **{f"--{name}": getattr(arguments, name) for name in files},
        **{f"--test_file {name}": path for name, path in tests.items()},
    }
    resume, stale = claim_output_dir(output_dir, training, arguments.overwrite_output_dir, inputs)
    tokenizer = load_tokenizer(model_name, arguments.tokenizer_name)
    splits = load_splits(arguments, task, dataset)
    splits["train"], dev = carve_dev(splits["train"], arguments.dev_fraction)
    extra = {DEV_SPLIT: dev} if dev else {}
    extra.update({name: check_rows(read_rows(path, task), task, path) for name, path in tests.items()})

    import torch
    from transformers import DataCollatorWithPadding
    from transformers.trainer_utils import IntervalStrategy

    model = _model(arguments, task, model_name, tokenizer, training.seed)
    trainable, total = harness.trainable_parameters(model)
    encoded = {
        split: encode(rows, task, tokenizer, arguments.max_seq_length)
        for split, rows in {**splits, **extra}.items()
    }
    periodic = training.eval_strategy != IntervalStrategy.NO or flag_given(training_flags, "eval_steps")
    if periodic and training.eval_strategy == IntervalStrategy.NO:
        training.eval_strategy = IntervalStrategy.STEPS  # --eval_steps N alone means: every N steps
    replace_previous_run(stale)
    trainer = harness.build_trainer(
        model,
        training,
        encoded["train"],
        eval_dataset=encoded[task.validation_splits[0]] if periodic else None,
        tokenizer=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_trainer_metrics(task) if periodic else None,
    )
    training_run = harness.train(trainer, resume=resume)
    results, predicted = evaluate(trainer, task, encoded)
    dev_results = _scores(trainer, task, encoded[DEV_SPLIT]) if dev else {}
    for name in tests:
        results.update({f"{name}/{k}": v for k, v in _scores(trainer, task, encoded[name]).items()})
    state = trainer_state(trainer)
    files = {"eval_results.json": {f"eval_{k}": v for k, v in results.items()}, "trainer_state.json": state}
    checks = harness.save_adapter(trainer, files=files)
    summary = {
        "experiment": "glue",
        "task": task.name,
        "dataset": dataset,
        "model": model_name,
        **adapter_fields(arguments, training.seed),
        "metrics": results,
        "predicted_classes": predicted,
        "dev_metrics": dev_results,
        "learning_rate": training.learning_rate,
        "curve": evaluation_curve(state["log_history"]),
        **timing_fields(training_run),
        "train_samples": len(splits["train"]),
        "steps": state["global_step"],
        "eval_samples": {split: len(rows) for split, rows in splits.items() if split != "train"},
        "epochs": training.num_train_epochs,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "torch_threads": torch.get_num_threads(),
        "adapter": str(Path(output_dir).resolve()),
        **checks,
    }
    if harness.is_main_process(trainer):
        harness.record(output_dir, summary)
    return summary


def _model(arguments: GlueArguments, task: GlueTask, model_name: str, tokenizer: Any, seed: int) -> Any:
    """The base model with a head for ``task`` and a fresh InA adapter (seeded)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

    flag = "--model_name_or_path"
    config = load_pretrained(AutoConfig, model_name, flag, num_labels=task.num_labels)
    if task.is_regression:
        config.problem_type = "regression"
    else:
        config.id2label = dict(enumerate(task.label_names or ()))
        config.label2id = {name: index for index, name in config.id2label.items()}
        config.problem_type = "single_label_classification"
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id  # decoders: pad with EOS, as the HF examples do
    set_seed(seed)
    try:
        base = load_pretrained(
            AutoModelForSequenceClassification,
            model_name,
            flag,
            config=config,
            ignore_mismatched_sizes=arguments.ignore_mismatched_sizes,
        )
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise ExperimentError(
            f"{model_name!r} already has a classification head of another size than task {task.name!r} needs "
            f"({task.num_labels} outputs); pass --ignore_mismatched_sizes to start a new head"
        ) from error
    return harness.peft_model(base, inhibition_config(arguments, base, "SEQ_CLS"))


def evaluate(
    trainer: Any, task: GlueTask, encoded: dict[str, Any]
) -> tuple[dict[str, float], dict[str, int] | None]:
    """The task's metrics on each validation split (MNLI's mismatched ones suffixed ``_mismatched``), and how
    often each class was predicted on the first split (None for a regression)."""
    results: dict[str, float] = {}
    predicted = None
    for split in (s for s in task.validation_splits if s in encoded):
        scores, counts = _predict(trainer, task, encoded[split])
        suffix = "_mismatched" if split == "validation_mismatched" else ""
        results.update({f"{name}{suffix}": value for name, value in scores.items()})
        predicted = counts if predicted is None else predicted
    return results, predicted


def _scores(trainer: Any, task: GlueTask, dataset: Any) -> dict[str, float]:
    return _predict(trainer, task, dataset)[0]


def _predict(trainer: Any, task: GlueTask, dataset: Any) -> tuple[dict[str, float], dict[str, int] | None]:
    """The task's metrics on ``dataset`` and the count of each predicted class (by label name)."""
    prediction = trainer.predict(dataset, metric_key_prefix="eval")
    if task.is_regression:
        return _trainer_metrics(task)(prediction), None
    outputs = prediction.predictions
    logits = np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs)
    names = list(task.label_names or range(task.num_labels))
    classes, counts = np.unique(logits.argmax(axis=-1), return_counts=True)
    counts_by_name = {str(names[c]): int(n) for c, n in zip(classes, counts, strict=True)}
    return _trainer_metrics(task)(prediction), counts_by_name


def _trainer_metrics(task: GlueTask) -> Any:
    """``compute_metrics`` for the Trainer: an `EvalPrediction` -> the task's metrics."""

    def scores(prediction: Any) -> dict[str, float]:
        outputs = prediction.predictions
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        return compute_metrics(task, np.asarray(logits, dtype=np.float64), np.asarray(prediction.label_ids))

    return scores
