"""`ina squad`: extractive question answering (SQuAD v1.1 / v2.0) with an InA adapter and the HF Trainer.

Mirrors Hugging Face's ``run_qa.py``: the same flags and any `TrainingArguments` flag; long contexts are
split into windows with ``--doc_stride``; answers are chosen as in ``run_qa.py``'s post-processing and
scored by the official SQuAD v2 rules (`ina.experiments.squad_metrics`). The QA head (``qa_outputs``) is
trained and saved with the adapter (PEFT's ``modules_to_save`` for ``QUESTION_ANS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ina.experiments.arguments import SquadArguments
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
from ina.experiments.heldout import DEV_SPLIT, carve_dev, test_files
from ina.experiments.squad_data import datasets, encode, load_examples, predict_answers, read_squad
from ina.experiments.squad_metrics import squad_v2_scores
from ina.foundation import harness
from ina.foundation.adapters import inhibition_config
from ina.foundation.arguments import flag_given
from ina.foundation.models import load_pretrained, resolve_base_model

SQUAD_EPOCHS = 10  # the authors' recipe (they add one warm-up epoch and keep the best validation F1)
# The offline default (no model or data named): the synthetic set, small enough for CPU.
DEMO_TRAINER = {"num_train_epochs": 3, "learning_rate": 1e-3}
# F1 first: the paper's (and the sweep table's) headline metric.
METRIC_ORDER = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact")


@uses_torch_threads
def run(arguments: SquadArguments, training_flags: list[str]) -> dict[str, Any]:
    """Train and evaluate one QA adapter; returns (and writes to ``result.json``, last) the run's record.

    ``training_flags`` are `transformers.TrainingArguments` flags (``--num_train_epochs 3``, ``--seed 1``).
    """
    if arguments.doc_stride >= arguments.max_seq_length:
        raise ExperimentError(
            f"--doc_stride must be smaller than --max_seq_length; got {arguments.doc_stride} ≥ "
            f"{arguments.max_seq_length}"
        )
    if flag_given(training_flags, "eval_steps") or flag_given(training_flags, "eval_strategy"):
        raise ExperimentError(
            "ina squad scores answers only after training (SQuAD needs its post-processing); drop "
            "--eval_steps / --eval_strategy (`ina glue` records validation curves)"
        )
    tests = test_files(arguments.test_file, reserved=("validation",))
    output_dir = arguments.output_dir or f"outputs/squad-inhibition{arguments.inhibition:g}"
    demo = not arguments.train_file and not arguments.model_name_or_path  # the synthetic set on MiniLM
    recipe = {
        **(DEMO_TRAINER if demo else {"num_train_epochs": SQUAD_EPOCHS}),
        "label_names": ["start_positions", "end_positions"],
    }
    training = harness.training_arguments(
        training_flags, output_dir, {**TRAINER_DEFAULTS, **recipe}, command="ina squad"
    )
    model_name = resolve_base_model(arguments.model_name_or_path or "minilm")
    inputs = {
        "--model_name_or_path": model_name,
        "--tokenizer_name": arguments.tokenizer_name,
        "--train_file": arguments.train_file,
        "--validation_file": arguments.validation_file,
        **{f"--test_file {name}": path for name, path in tests.items()},
    }
    resume, stale = claim_output_dir(output_dir, training, arguments.overwrite_output_dir, inputs)
    train_examples, validation, source = load_examples(arguments)
    train_examples, dev = carve_dev(train_examples, arguments.dev_fraction)
    extra = {DEV_SPLIT: dev} if dev else {}
    extra.update({name: read_squad(path) for name, path in tests.items()})
    version_2 = arguments.version_2_with_negative or source == "synthetic"
    tokenizer = load_tokenizer(model_name, arguments.tokenizer_name)

    from transformers import AutoConfig, AutoModelForQuestionAnswering, DataCollatorWithPadding, set_seed

    flag = "--model_name_or_path"
    config = load_pretrained(AutoConfig, model_name, flag)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id  # decoders: pad with EOS, as the HF examples do
    set_seed(training.seed)
    base = load_pretrained(AutoModelForQuestionAnswering, model_name, flag, config=config)
    model = harness.peft_model(base, inhibition_config(arguments, base, "QUESTION_ANS"))
    trainable, total = harness.trainable_parameters(model)

    train_dataset, eval_dataset, eval_features = datasets(
        train_examples, validation, tokenizer, arguments.max_seq_length, arguments.doc_stride
    )
    replace_previous_run(stale)
    trainer = harness.build_trainer(
        model, training, train_dataset, tokenizer=tokenizer, data_collator=DataCollatorWithPadding(tokenizer)
    )
    training_run = harness.train(trainer, resume=resume)

    predictions, null_differences, results = _score(
        trainer, validation, eval_dataset, eval_features, arguments, version_2
    )
    scores = {}
    for name, examples in extra.items():
        dataset, features = _eval_set(examples, tokenizer, arguments)
        scores[name] = _score(trainer, examples, dataset, features, arguments, version_2)[2]
    files = {
        "predictions.json": predictions,
        "null_odds.json": null_differences,
        "eval_results.json": {f"eval_{k}": v for k, v in results.items()},
    }
    checks = harness.save_adapter(trainer, files=files)
    summary = {
        "experiment": "squad",
        "task": "squad_v2" if version_2 else "squad",
        "dataset": source,
        "model": model_name,
        **adapter_fields(arguments, training.seed),
        "metrics": {
            **{k: results[k] for k in METRIC_ORDER if k in results},
            **{f"{n}/{k}": scores[n][k] for n in tests for k in METRIC_ORDER if k in scores[n]},
        },
        "dev_metrics": {k: scores[DEV_SPLIT][k] for k in METRIC_ORDER if k in scores.get(DEV_SPLIT, {})},
        "learning_rate": training.learning_rate,
        **timing_fields(training_run),
        "train_samples": len(train_examples),
        "train_windows": len(train_dataset),
        "eval_samples": {"validation": len(validation)},
        "epochs": training.num_train_epochs,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "adapter": str(Path(output_dir).resolve()),
        **checks,
    }
    if harness.is_main_process(trainer):
        harness.record(output_dir, summary)
    return summary


def _score(
    trainer: Any,
    examples: list[Any],
    dataset: Any,
    features: dict[str, list[Any]],
    arguments: SquadArguments,
    version_2: bool,
) -> tuple[dict[str, str], dict[str, float], dict[str, float]]:
    """Predicted answers, null-score differences and official scores of ``examples``."""
    start_logits, end_logits = trainer.predict(dataset).predictions[:2]
    predictions, null_differences = predict_answers(
        examples,
        features,
        np.asarray(start_logits),
        np.asarray(end_logits),
        n_best=arguments.n_best_size,
        max_answer_length=arguments.max_answer_length,
        version_2_with_negative=version_2,
        null_score_diff_threshold=arguments.null_score_diff_threshold,
    )
    return predictions, null_differences, squad_v2_scores({e.id: e.answers for e in examples}, predictions)


def _eval_set(
    examples: list[Any], tokenizer: Any, arguments: SquadArguments
) -> tuple[Any, dict[str, list[Any]]]:
    """The evaluation windows of ``examples`` as a `datasets.Dataset`, and their features."""
    from datasets import Dataset

    features = encode(examples, tokenizer, arguments.max_seq_length, arguments.doc_stride, with_labels=False)
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    return Dataset.from_dict({k: features[k] for k in names if k in features}), features
