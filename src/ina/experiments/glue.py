"""`ina glue`: fine-tune an InA adapter (and the classifier head) on a GLUE task with the HF Trainer.

Mirrors Hugging Face's ``run_glue.py``: the same flags and any `TrainingArguments` flag, the official
metric of each task, ``eval_results.json`` in the output folder. The adapter is saved with the trained
classifier (PEFT's ``modules_to_save`` for ``SEQ_CLS``) and loads back with ``ina.load_adapter``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ina.experiments import metrics
from ina.experiments.common import (
    RESULT_FILE,
    ExperimentError,
    add_model_arguments,
    add_sample_and_output_arguments,
    ensure_padding,
    inhibition_config,
    load_tokenizer,
    torch_threads,
    trainable_parameters,
    training_arguments,
    write_json,
)
from ina.experiments.glue_data import (
    TSV_FILES,
    VADER_DATASET,
    GlueTask,
    check_rows,
    get_task,
    hub_rows,
    read_rows,
    vader_rows,
)

GLUE_EPOCHS = 10  # the authors' recipe
# The offline default (no task, model or data named): small enough for a 4 x 3 sweep on 2 CPU cores.
DEMO_DATA = {"max_train_samples": 800, "max_eval_samples": 500}
# LoRA-style adapters need a larger step than full fine-tuning to learn in a few hundred steps.
DEMO_TRAINER = {"num_train_epochs": 2, "learning_rate": 1e-3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ina glue`'s own flags (HF ``run_glue.py`` names); adapter flags come from `add_adapter_arguments`."""
    parser.add_argument(
        "--task_name",
        "--task",
        dest="task_name",
        default=None,
        help="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli (default, with no data named: the offline "
        "SST-2-like task on vader's movie-review sentences)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--dataset_name",
        default=None,
        help=f"'glue' (the hub's dataset; needs the network once) or {VADER_DATASET!r} (offline, sst2 only); "
        "default: glue when a task is named without files, else the files",
    )
    parser.add_argument(
        "--data_dir", default=None, help="a GLUE task folder (train.tsv, dev.tsv / dev_matched.tsv ...)"
    )
    parser.add_argument(
        "--train_file", default=None, help="training data: .tsv (GLUE layout), .csv, .json or .jsonl"
    )
    parser.add_argument(
        "--validation_file", default=None, help="validation data (MNLI: matched), same formats"
    )
    parser.add_argument("--validation_mismatched_file", default=None, help="MNLI mismatched validation data")
    parser.add_argument(
        "--ignore_mismatched_sizes",
        action="store_true",
        help="replace a classification head of another size (e.g. starting RTE from an MNLI model) by a new one",
    )
    parser.add_argument(
        "--max_seq_length", type=int, default=128, help="longer inputs are truncated (default 128)"
    )
    add_sample_and_output_arguments(parser, "rows", " (default outputs/glue-TASK-ρ)")
    parser.add_argument(
        "--split_seed", type=int, default=0, help=f"{VADER_DATASET}: seed of the fixed train/validation split"
    )
    parser.add_argument(
        "--neutral_margin",
        type=float,
        default=1.0,
        help=f"{VADER_DATASET}: drop sentences whose mean rating (-4..4) is within this distance of 0 (default 1)",
    )


def resolve(args: argparse.Namespace) -> tuple[GlueTask, str, str]:
    """(task, data source, model) after defaults; raises before anything heavy happens."""
    files = args.train_file or args.validation_file or args.data_dir
    dataset = args.dataset_name
    if dataset is None:
        dataset = "files" if files else ("glue" if args.task_name else VADER_DATASET)
    elif files:
        raise ExperimentError(
            f"--dataset_name {dataset!r} and data files were both given; pass one or the other"
        )
    task = get_task(args.task_name or "sst2")
    if dataset == VADER_DATASET and task.name != "sst2":
        raise ExperimentError(
            f"--dataset_name {VADER_DATASET} is a binary sentiment task: use --task_name sst2; got {task.name!r}"
        )
    if dataset == "files" and not (args.data_dir or (args.train_file and args.validation_file)):
        raise ExperimentError(
            "pass both --train_file and --validation_file (or --data_dir with GLUE's TSV files)"
        )
    if args.model_name_or_path:
        model = args.model_name_or_path
    else:
        from ina.embedded.minilm import model_path

        model = str(model_path())
    return task, dataset, model


def load_splits(args: argparse.Namespace, task: GlueTask, dataset: str) -> dict[str, list[dict[str, Any]]]:
    """Checked train and validation rows; validation split names as on the hub."""
    if dataset == VADER_DATASET:
        raw = vader_rows(args.neutral_margin, split_seed=args.split_seed)
        sources = {split: f"{VADER_DATASET} {split}" for split in raw}
    elif dataset == "glue":
        raw = hub_rows(task)
        sources = {split: f"glue/{task.name} {split}" for split in raw}
    elif dataset == "files":
        paths: dict[str, str] = {}
        if args.data_dir:
            for split in ("train", *task.validation_splits):
                candidate = Path(args.data_dir) / TSV_FILES[split]
                if candidate.is_file():
                    paths[split] = str(candidate)
        if args.train_file:
            paths["train"] = args.train_file
        if args.validation_file:
            paths[task.validation_splits[0]] = args.validation_file
        if args.validation_mismatched_file:
            paths["validation_mismatched"] = args.validation_mismatched_file
        for split in ("train", task.validation_splits[0]):
            if split not in paths:
                raise ExperimentError(
                    f"no {split} data: --data_dir {args.data_dir!r} lacks {TSV_FILES[split]}; "
                    "pass --train_file / --validation_file"
                )
        raw = {split: read_rows(path, task) for split, path in paths.items()}
        sources = dict(paths)
    else:
        raise ExperimentError(f"--dataset_name must be 'glue' or {VADER_DATASET!r}; got {dataset!r}")
    splits = {split: check_rows(rows, task, sources[split]) for split, rows in raw.items()}
    if args.max_train_samples:
        splits["train"] = splits["train"][: args.max_train_samples]
    if args.max_eval_samples:
        for split in splits:
            if split != "train":
                splits[split] = splits[split][: args.max_eval_samples]
    return splits


def compute_metrics(task: GlueTask, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official metrics from model outputs: ``(n, num_labels)`` logits or ``(n, 1)`` scores."""
    if task.is_regression:
        scores = logits.reshape(-1)
        return {"pearson": metrics.pearson(scores, labels), "spearman": metrics.spearman(scores, labels)}
    predictions = logits.argmax(axis=-1)
    results: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            results["accuracy"] = metrics.accuracy(predictions, labels)
        elif name == "f1":
            results["f1"] = metrics.f1_binary(predictions, labels)
        elif name == "matthews_correlation":
            results["matthews_correlation"] = metrics.matthews_corrcoef(predictions, labels)
    return results


def run(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Train and evaluate one adapter; returns (and writes to ``result.json``, last) the run's record."""
    with torch_threads(args.torch_threads):
        return _run(args, extra)


def _run(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    task, dataset, model_name = resolve(args)
    demo = dataset == VADER_DATASET and not args.model_name_or_path
    if demo:
        args.max_train_samples = args.max_train_samples or DEMO_DATA["max_train_samples"]
        args.max_eval_samples = args.max_eval_samples or DEMO_DATA["max_eval_samples"]
    output_dir = args.output_dir or f"outputs/glue-{task.name}-inhibition{args.inhibition:g}"
    training = training_arguments(
        extra, output_dir, DEMO_TRAINER if demo else {"num_train_epochs": GLUE_EPOCHS}
    )
    tokenizer = load_tokenizer(model_name, args.tokenizer_name)
    splits = load_splits(args, task, dataset)

    import torch
    from peft import get_peft_model
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    config = AutoConfig.from_pretrained(model_name, num_labels=task.num_labels)
    if task.is_regression:
        config.problem_type = "regression"
    else:
        config.id2label = dict(enumerate(task.label_names or ()))
        config.label2id = {name: index for index, name in config.id2label.items()}
        config.problem_type = "single_label_classification"
    ensure_padding(tokenizer, config)
    set_seed(training.seed)
    try:
        base = AutoModelForSequenceClassification.from_pretrained(
            model_name, config=config, ignore_mismatched_sizes=args.ignore_mismatched_sizes
        )
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        raise ExperimentError(
            f"{model_name!r} already has a classification head of another size than task {task.name!r} needs "
            f"({task.num_labels} outputs); pass --ignore_mismatched_sizes to start a new head"
        ) from error
    model = get_peft_model(base, inhibition_config(args, base, "SEQ_CLS"))
    trainable, total = trainable_parameters(model)

    encoded = {split: _encode(rows, task, tokenizer, args.max_seq_length) for split, rows in splits.items()}
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=encoded["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    train_output = trainer.train()
    train_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    results: dict[str, float] = {}
    for split in (s for s in task.validation_splits if s in encoded):
        prediction = trainer.predict(encoded[split], metric_key_prefix="eval")
        logits = (
            prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        )
        split_metrics = compute_metrics(
            task, np.asarray(logits, dtype=np.float64), np.asarray(prediction.label_ids)
        )
        suffix = "_mismatched" if split == "validation_mismatched" else ""
        results.update({f"{name}{suffix}": value for name, value in split_metrics.items()})
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_json(Path(output_dir) / "eval_results.json", {f"eval_{k}": v for k, v in results.items()})
    record = {
        "experiment": "glue",
        "task": task.name,
        "dataset": dataset,
        "model": model_name,
        "inhibition": args.inhibition,
        "activation": args.activation,
        "r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "seed": training.seed,
        "metrics": results,
        "train_loss": train_output.training_loss,
        "train_seconds": round(train_seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "train_samples": len(splits["train"]),
        "eval_samples": {split: len(rows) for split, rows in splits.items() if split != "train"},
        "epochs": training.num_train_epochs,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(Path(output_dir) / RESULT_FILE, record)
    return record


def _encode(rows: list[dict[str, Any]], task: GlueTask, tokenizer: Any, max_length: int) -> Any:
    from datasets import Dataset

    columns = [[row[c] for row in rows] for c in task.text_columns]
    features = tokenizer(*columns, truncation=True, max_length=max_length)
    data = dict(features)
    data["labels"] = [row["label"] for row in rows]
    return Dataset.from_dict(data)
