"""`ina squad`: extractive question answering (SQuAD v1.1 / v2.0) with an InA adapter and the HF Trainer.

Mirrors Hugging Face's ``run_qa.py``: the same flags and any `TrainingArguments` flag; long contexts are
split into windows with ``--doc_stride``; answers are chosen as in ``run_qa.py``'s post-processing and
scored by the official SQuAD v2 rules (`ina.experiments.squad_metrics`). The QA head (``qa_outputs``) is
trained and saved with the adapter (PEFT's ``modules_to_save`` for ``QUESTION_ANS``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

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
from ina.experiments.squad_data import Example, encode, predict_answers, read_squad, synthetic_squad
from ina.experiments.squad_metrics import squad_v2_scores

SQUAD_EPOCHS = 10  # the authors' recipe (they add one warm-up epoch and keep the best validation F1)
# The offline default (no model or data named): a synthetic set, small enough for CPU.
DEMO_DATA = {"train": 300, "validation": 100}
DEMO_TRAINER = {"num_train_epochs": 3, "learning_rate": 1e-3}


# F1 first: the paper's (and the sweep table's) headline metric.
METRIC_ORDER = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ina squad`'s own flags (HF ``run_qa.py`` names)."""
    add_model_arguments(parser, " (must be fast)")
    parser.add_argument(
        "--train_file",
        default=None,
        help="SQuAD JSON ({'data': [...paragraphs...]}) or JSON lines (id, question, context, answers); "
        "default, with no files: a generated synthetic set",
    )
    parser.add_argument("--validation_file", default=None, help="validation data, same formats")
    parser.add_argument(
        "--version_2_with_negative",
        action="store_true",
        help="SQuAD v2: some questions have no answer (implied by the synthetic set)",
    )
    parser.add_argument(
        "--max_seq_length", type=int, default=384, help="window length in tokens (default 384)"
    )
    parser.add_argument(
        "--doc_stride",
        type=int,
        default=128,
        help="overlap of consecutive windows of a long context (default 128)",
    )
    parser.add_argument(
        "--max_answer_length", type=int, default=30, help="longest answer in tokens (default 30)"
    )
    parser.add_argument(
        "--n_best_size", type=int, default=20, help="start/end candidates per window (default 20)"
    )
    parser.add_argument(
        "--null_score_diff_threshold",
        type=float,
        default=0.0,
        help="v2: predict no answer when null score - best span score exceeds this (default 0)",
    )
    add_sample_and_output_arguments(parser, "questions")


def load_examples(args: argparse.Namespace) -> tuple[list[Example], list[Example], str]:
    """Train and validation examples and the data source's name."""
    if bool(args.train_file) != bool(args.validation_file):
        raise ExperimentError(
            "pass both --train_file and --validation_file, or neither (the synthetic demo set)"
        )
    if args.train_file:
        train, validation, source = read_squad(args.train_file), read_squad(args.validation_file), "files"
    else:
        examples = synthetic_squad(DEMO_DATA["train"] + DEMO_DATA["validation"], seed=0)
        train, validation, source = (
            examples[: DEMO_DATA["train"]],
            examples[DEMO_DATA["train"] :],
            "synthetic",
        )
        args.version_2_with_negative = True
    if not args.version_2_with_negative:
        impossible = [e.id for e in train + validation if e.is_impossible]
        if impossible:
            raise ExperimentError(
                f"{len(impossible)} questions have no answer (first: {impossible[:3]}); that is SQuAD v2 data: "
                "pass --version_2_with_negative"
            )
    if args.max_train_samples:
        train = train[: args.max_train_samples]
    if args.max_eval_samples:
        validation = validation[: args.max_eval_samples]
    return train, validation, source


def run(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Train and evaluate one QA adapter; returns (and writes to ``result.json``, last) the run's record."""
    with torch_threads(args.torch_threads):
        return _run(args, extra)


def _run(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    if args.doc_stride >= args.max_seq_length:
        raise ExperimentError(
            f"--doc_stride must be smaller than --max_seq_length; got {args.doc_stride} ≥ {args.max_seq_length}"
        )
    train, validation, source = load_examples(args)
    demo = source == "synthetic" and not args.model_name_or_path
    if args.model_name_or_path:
        model_name = args.model_name_or_path
    else:
        from ina.embedded.minilm import model_path

        model_name = str(model_path())
    output_dir = args.output_dir or f"outputs/squad-inhibition{args.inhibition:g}"
    training = training_arguments(
        extra,
        output_dir,
        {
            **(DEMO_TRAINER if demo else {"num_train_epochs": SQUAD_EPOCHS}),
            "label_names": "start_positions end_positions",
        },
    )
    tokenizer = load_tokenizer(model_name, args.tokenizer_name)

    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    config = AutoConfig.from_pretrained(model_name)
    ensure_padding(tokenizer, config)
    set_seed(training.seed)
    base = AutoModelForQuestionAnswering.from_pretrained(model_name, config=config)
    model = get_peft_model(base, inhibition_config(args, base, "QUESTION_ANS"))
    trainable, total = trainable_parameters(model)

    model_inputs = [
        name
        for name in tokenizer.model_input_names
        if name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    train_features = encode(train, tokenizer, args.max_seq_length, args.doc_stride, with_labels=True)
    train_dataset = Dataset.from_dict(
        {
            k: train_features[k]
            for k in [*model_inputs, "start_positions", "end_positions"]
            if k in train_features
        }
    )
    eval_features = encode(validation, tokenizer, args.max_seq_length, args.doc_stride, with_labels=False)
    eval_dataset = Dataset.from_dict({k: eval_features[k] for k in model_inputs if k in eval_features})

    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=train_dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    train_output = trainer.train()
    train_seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    output = trainer.predict(eval_dataset)
    start_logits, end_logits = output.predictions[:2]
    predictions, null_differences = predict_answers(
        validation,
        eval_features,
        np.asarray(start_logits),
        np.asarray(end_logits),
        n_best=args.n_best_size,
        max_answer_length=args.max_answer_length,
        version_2_with_negative=args.version_2_with_negative,
        null_score_diff_threshold=args.null_score_diff_threshold,
    )
    results = squad_v2_scores({e.id: e.answers for e in validation}, predictions)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_json(Path(output_dir) / "predictions.json", predictions)
    write_json(Path(output_dir) / "null_odds.json", null_differences)
    write_json(Path(output_dir) / "eval_results.json", {f"eval_{k}": v for k, v in results.items()})
    record = {
        "experiment": "squad",
        "task": "squad_v2" if args.version_2_with_negative else "squad",
        "dataset": source,
        "model": model_name,
        "inhibition": args.inhibition,
        "activation": args.activation,
        "r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "seed": training.seed,
        "metrics": {k: results[k] for k in METRIC_ORDER if k in results},
        "train_loss": train_output.training_loss,
        "train_seconds": round(train_seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "train_samples": len(train),
        "train_windows": len(train_dataset),
        "eval_samples": {"validation": len(validation)},
        "epochs": training.num_train_epochs,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    write_json(Path(output_dir) / RESULT_FILE, record)
    return record
