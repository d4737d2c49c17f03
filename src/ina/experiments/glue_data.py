"""GLUE tasks and their data: the hub's `glue` dataset, GLUE's own TSV files, CSV or JSON lines.

Every source is read into rows with the hub's column names (``sentence``, ``sentence1``/``sentence2``,
``question1``/``question2``, ``premise``/``hypothesis``, ``question``/``sentence``) and a ``label`` that
is a class index (or a float for STS-B); anything else is an `ExperimentError` naming the file and the fix.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ina.embedded.vader import DATASET_NAME as VADER_DATASET
from ina.experiments.common import ExperimentError

if TYPE_CHECKING:
    from ina.experiments.arguments import GlueArguments

logger = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its input columns, label set (``None``: regression), metrics and validation splits."""

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    validation_splits: tuple[str, ...] = ("validation",)

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None


# Label order and column names as in the hub's `glue` dataset, so models trained on either agree.
TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",)),
        GlueTask("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
        GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1")),
        GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1")),
        GlueTask("stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman")),
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            ("validation_matched", "validation_mismatched"),
        ),
        GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
        GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",)),
        GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
    )
}
# Column names in GLUE's distributed TSV files -> the hub's names.
TSV_ALIASES: dict[str, dict[str, str]] = {
    "mrpc": {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
    "qqp": {"is_duplicate": "label"},
    "stsb": {"score": "label"},
    "mnli": {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
}
# GLUE's CoLA TSVs have no header: source, label, original label, sentence.
COLA_COLUMNS = ("source", "label", "original_label", "sentence")
# File names inside a GLUE task folder (--data_dir), per split.
TSV_FILES: dict[str, str] = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
STSB_RANGE = (0.0, 5.0)


def get_task(name: str) -> GlueTask:
    """The task called ``name`` (case-insensitive; ``sst-2`` and ``sts-b`` accepted)."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ExperimentError(f"--task_name must be one of {sorted(TASKS)}; got {name!r}")
    return TASKS[key]


def read_rows(path: str | Path, task: GlueTask) -> list[Row]:
    """Rows of a local file (``.tsv`` in GLUE's layout, ``.csv``, ``.json`` / ``.jsonl``), with hub column names."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(
            f"data file {str(path)!r} does not exist; check --train_file / --validation_file / --data_dir"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".tsv":
            rows = _read_tsv(path, task)
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as file:
                rows = [dict(row) for row in csv.DictReader(file)]
        elif suffix in (".json", ".jsonl"):
            rows = _read_json(path)
        else:
            raise ExperimentError(
                f"data file {str(path)!r}: the extension must be .tsv, .csv, .json or .jsonl; got {suffix!r}"
            )
    except UnicodeDecodeError as error:
        raise ExperimentError(
            f"data file {str(path)!r} (--train_file / --validation_file / --data_dir): not UTF-8 text (byte "
            f"{error.object[error.start]:#04x} at offset {error.start}); give a .tsv, .csv, .json or .jsonl file"
        ) from None
    except csv.Error as error:
        raise ExperimentError(
            f"data file {str(path)!r} (--train_file / --validation_file / --data_dir): not readable as CSV/TSV "
            f"({error}); fix the file"
        ) from None
    if not rows:
        raise ExperimentError(f"data file {str(path)!r} holds no rows")
    aliases = TSV_ALIASES.get(task.name, {})
    renamed = []
    for row in rows:
        row = dict(row)
        for old, new in aliases.items():
            if old in row and new not in row:
                row[new] = row.pop(old)
        renamed.append(row)
    return renamed


def _read_tsv(path: Path, task: GlueTask) -> list[Row]:
    with path.open(newline="", encoding="utf-8") as file:
        lines = list(csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        return []
    header = lines[0]
    if task.name == "cola" and "sentence" not in header and len(header) == len(COLA_COLUMNS):
        header, body = list(COLA_COLUMNS), lines
    else:
        body = lines[1:]
    rows = [dict(zip(header, line, strict=True)) for line in body if len(line) == len(header)]
    skipped = len(body) - len(rows)
    if skipped:
        logger.warning(
            "%s: skipped %d malformed line(s) with a field count other than %d", path, skipped, len(header)
        )
    return rows


def _read_json(path: Path) -> list[Row]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ExperimentError(
                f"data file {str(path)!r} (--train_file / --validation_file): neither JSON nor JSON lines "
                f"(line {error.lineno}: {error.msg}); fix the file"
            ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ExperimentError(f"data file {str(path)!r}: expected a list of objects (or JSON lines)")
    return data


def check_rows(rows: list[Row], task: GlueTask, source: str) -> list[Row]:
    """Rows with the task's text columns and a valid label; raises naming the missing column or bad label."""
    columns = set(rows[0])
    for needed in (*task.text_columns, "label"):
        if needed not in columns:
            raise ExperimentError(
                f"{source}: task {task.name!r} needs a column {needed!r} (columns needed: "
                f"{[*task.text_columns, 'label']}); the file has {sorted(columns)}"
            )
    checked = []
    for number, row in enumerate(rows, start=1):
        texts = {column: row[column] for column in task.text_columns}
        for column, text in texts.items():
            if not isinstance(text, str):
                raise ExperimentError(f"{source}, row {number}: column {column!r} must be text; got {text!r}")
        checked.append({**texts, "label": _label(row["label"], task, f"{source}, row {number}")})
    return checked


def _label(value: Any, task: GlueTask, where: str) -> int | float:
    if task.label_names is None:
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = float("nan")
        low, high = STSB_RANGE
        if not low <= score <= high:
            raise ExperimentError(
                f"{where}: STS-B labels are similarity scores in [{low}, {high}]; got {value!r}"
            )
        return score
    if isinstance(value, str) and value.strip() in task.label_names:
        return task.label_names.index(value.strip())
    try:
        index = int(str(value).strip())
    except ValueError:
        index = -1
    if str(value).strip() != str(index) or not 0 <= index < len(task.label_names):
        raise ExperimentError(
            f"{where}: label {value!r} is outside task {task.name!r}'s set: indices 0..{len(task.label_names) - 1} "
            f"or names {list(task.label_names)}"
        )
    return index


def hub_rows(task: GlueTask) -> dict[str, list[Row]]:
    """The task's train and validation splits from the hub's `glue` dataset (needs the network once)."""
    try:
        from datasets import load_dataset

        dataset = load_dataset("nyu-mll/glue", task.name)
    except Exception as error:
        raise ExperimentError(
            f"could not load task {task.name!r} of the `glue` dataset from the Hugging Face hub "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); offline, pass "
            "--train_file and --validation_file (GLUE TSV, CSV or JSON lines) or --data_dir (a GLUE task folder)"
        ) from error
    return {split: [dict(row) for row in dataset[split]] for split in ("train", *task.validation_splits)}


def vader_rows(
    neutral_margin: float = 1.0, validation_share: float = 0.2, split_seed: int = 0
) -> dict[str, list[Row]]:
    """An SST-2-like binary task from the vader movie-review sentences (human ratings in [-4, 4]).

    Sentences rated within ``±neutral_margin`` of 0 are dropped; the rest are labelled positive (rating > 0)
    or negative, shuffled with ``split_seed`` and split into train / validation. The split depends on
    ``split_seed`` only, so runs with different training seeds share one validation set.
    """
    from ina.embedded.vader import movie_review_sentences

    rows = [
        {"sentence": sentence, "label": int(rating > 0)}
        for sentence, rating in movie_review_sentences()
        if abs(rating) >= neutral_margin
    ]
    random.Random(split_seed).shuffle(rows)
    cut = round(len(rows) * (1 - validation_share))
    return {"train": rows[:cut], "validation": rows[cut:]}


def resolve(arguments: GlueArguments) -> tuple[GlueTask, str, str]:
    """(task, data source, model) after defaults; raises before anything heavy happens."""
    files = arguments.train_file or arguments.validation_file or arguments.data_dir
    dataset = arguments.dataset_name
    if dataset is None:
        dataset = "files" if files else ("glue" if arguments.task_name else VADER_DATASET)
    elif files:
        raise ExperimentError(
            f"--dataset_name {dataset!r} and data files were both given; pass one or the other"
        )
    task = get_task(arguments.task_name or "sst2")
    if dataset == VADER_DATASET and task.name != "sst2":
        raise ExperimentError(
            f"--dataset_name {VADER_DATASET} is a binary sentiment task: use --task_name sst2; got {task.name!r}"
        )
    if dataset == "files" and not (
        arguments.data_dir or (arguments.train_file and arguments.validation_file)
    ):
        raise ExperimentError(
            "pass both --train_file and --validation_file (or --data_dir with GLUE's TSV files)"
        )
    from ina.foundation.models import resolve_base_model

    return task, dataset, resolve_base_model(arguments.model_name_or_path or "minilm")


def load_splits(arguments: GlueArguments, task: GlueTask, dataset: str) -> dict[str, list[Row]]:
    """Checked train and validation rows; validation split names as on the hub."""
    if dataset == VADER_DATASET:
        raw = vader_rows(arguments.neutral_margin, split_seed=arguments.split_seed)
        sources = {split: f"{VADER_DATASET} {split}" for split in raw}
    elif dataset == "glue":
        raw = hub_rows(task)
        sources = {split: f"glue/{task.name} {split}" for split in raw}
    elif dataset == "files":
        paths = _file_paths(arguments, task)
        raw = {split: read_rows(path, task) for split, path in paths.items()}
        sources = dict(paths)
    else:
        raise ExperimentError(f"--dataset_name must be 'glue' or {VADER_DATASET!r}; got {dataset!r}")
    splits = {split: check_rows(rows, task, sources[split]) for split, rows in raw.items()}
    if arguments.max_train_samples:
        splits["train"] = splits["train"][: arguments.max_train_samples]
    if arguments.max_eval_samples:
        for split in splits:
            if split != "train":
                splits[split] = splits[split][: arguments.max_eval_samples]
    return splits


def _file_paths(arguments: GlueArguments, task: GlueTask) -> dict[str, str]:
    paths: dict[str, str] = {}
    if arguments.data_dir:
        for split in ("train", *task.validation_splits):
            candidate = Path(arguments.data_dir) / TSV_FILES[split]
            if candidate.is_file():
                paths[split] = str(candidate)
    if arguments.train_file:
        paths["train"] = arguments.train_file
    if arguments.validation_file:
        paths[task.validation_splits[0]] = arguments.validation_file
    if arguments.validation_mismatched_file:
        paths["validation_mismatched"] = arguments.validation_mismatched_file
    for split in ("train", task.validation_splits[0]):
        if split not in paths:
            raise ExperimentError(
                f"no {split} data: --data_dir {arguments.data_dir!r} lacks {TSV_FILES[split]}; "
                "pass --train_file / --validation_file"
            )
    return paths


def encode(rows: list[Row], task: GlueTask, tokenizer: Any, max_length: int) -> Any:
    """Rows as a `datasets.Dataset` of token ids and ``labels``."""
    from datasets import Dataset

    columns = [[row[c] for row in rows] for c in task.text_columns]
    data = dict(tokenizer(*columns, truncation=True, max_length=max_length))
    data["labels"] = [row["label"] for row in rows]
    return Dataset.from_dict(data)
