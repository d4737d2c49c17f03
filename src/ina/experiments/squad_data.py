"""SQuAD data: reading v1/v2 JSON, a synthetic offline set, span labelling and answer decoding.

Span labelling works on character offsets from any fast tokenizer. Offsets are first trimmed of
whitespace, because byte-level BPE (GPT-2, RoBERTa without ``trim_offsets``) and SentencePiece
(``▁`` pieces) report a token's span including the space before the word. The start token is the
first context token ending after the answer's first character, the end token the last one starting
before the answer's end (exclusive); decoding slices ``context[start_char:end_char]`` with the end
exclusive, so a gold span labelled and decoded returns the answer text exactly (when the answer
starts and ends on token boundaries, as whole words do). An answer not wholly inside a window of a
long context labels that window as "no answer" (index 0), as in Hugging Face's ``run_qa.py``.
"""

from __future__ import annotations

import collections
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ina.experiments.common import ExperimentError

if TYPE_CHECKING:
    from ina.experiments.arguments import SquadArguments

NULL_INDEX = 0  # the "no answer" position: the first token ([CLS] where the tokenizer adds one)
# The offline default (no data named): a synthetic set, small enough for CPU.
DEMO_DATA = {"train": 300, "validation": 100}


@dataclass
class Example:
    """One question: its context and gold answers (``answers`` empty: unanswerable)."""

    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    answer_starts: list[int] = field(default_factory=list)

    @property
    def is_impossible(self) -> bool:
        return not self.answers


def read_squad(path: str | Path) -> list[Example]:
    """Examples of a SQuAD v1.1 / v2.0 JSON file (``{"data": [{"paragraphs": [...]}]}``) or of JSON lines
    in the hub's flat layout (``id, question, context, answers: {text: [...], answer_start: [...]}``)."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(
            f"SQuAD file {str(path)!r} does not exist; check --train_file / --validation_file"
        )
    where = f"SQuAD file {str(path)!r} (--train_file / --validation_file)"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ExperimentError(
            f"{where}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); give "
            "SQuAD JSON or JSON lines"
        ) from None
    try:
        data = json.loads(text)
        records = _flatten(data, path) if isinstance(data, dict) and "data" in data else data
    except json.JSONDecodeError:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ExperimentError(
                        f"{where}, line {number}: neither SQuAD JSON nor JSON lines ({error.msg} at column "
                        f"{error.colno}); fix the file"
                    ) from None
    except (AttributeError, KeyError, TypeError) as error:
        raise ExperimentError(f"{where}: not in SQuAD's layout ({type(error).__name__}: {error})") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise ExperimentError(f"{where}: expected question records (objects); see --help for the layouts")
    try:
        examples = [_example(record, path, number) for number, record in enumerate(records, start=1)]
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, ExperimentError):
            raise
        raise ExperimentError(
            f"{where}: an `answers` field is malformed ({type(error).__name__}: {error}); expected "
            "{text: [...], answer_start: [...]}"
        ) from None
    if not examples:
        raise ExperimentError(f"SQuAD file {str(path)!r} holds no questions")
    return examples


def _flatten(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    records = []
    for article in data["data"]:
        for paragraph in article.get("paragraphs", []):
            if "context" not in paragraph or "qas" not in paragraph:
                raise ExperimentError(
                    f"{path}: every paragraph needs 'context' and 'qas'; got keys {sorted(paragraph)}"
                )
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                records.append(
                    {
                        "id": qa.get("id"),
                        "question": qa.get("question"),
                        "context": paragraph["context"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [a["answer_start"] for a in answers],
                        },
                    }
                )
    return records


def _example(record: dict[str, Any], path: Path, number: int) -> Example:
    for key in ("id", "question", "context", "answers"):
        if key not in record or record[key] is None:
            raise ExperimentError(
                f"{path}, question {number}: missing {key!r} (needed: id, question, context, answers)"
            )
    answers = record["answers"]
    if isinstance(answers, list):  # the nested layout's list of {text, answer_start}
        answers = {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
    texts, starts = list(answers.get("text", [])), [int(s) for s in answers.get("answer_start", [])]
    context = record["context"]
    for text, start in zip(texts, starts, strict=True):
        if context[start : start + len(text)] != text:
            raise ExperimentError(
                f"{path}, question {record['id']!r}: answer {text!r} is not at answer_start {start} of its context "
                f"(found {context[start : start + len(text)]!r}); fix the offset"
            )
    return Example(str(record["id"]), str(record["question"]), context, texts, starts)


def synthetic_squad(count: int = 300, seed: int = 0, unanswerable_share: float = 0.3) -> list[Example]:
    """A generated SQuAD v2-style set (SYNTHETIC: made-up people and facts, for offline demos and tests).

    Each context states three facts about a person; questions ask for one of them, or (unanswerable)
    for a fact the context does not state.
    """
    rng = random.Random(seed)
    names = ["Ada", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jana", "Kofi", "Lena"]
    cities = ["Prague", "Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Quebec", "Tunis", "Perth", "Krakow"]
    jobs = ["baker", "pilot", "chemist", "teacher", "carpenter", "nurse", "violinist", "surveyor"]
    foods = ["plums", "rice", "lentils", "cheese", "figs", "noodles", "olives", "bread"]
    examples = []
    for index in range(count):
        name, city, job, food = rng.choice(names), rng.choice(cities), rng.choice(jobs), rng.choice(foods)
        year = str(rng.randint(1900, 2010))
        context = (
            f"{name} was born in {city} in {year}. Later {name} worked as a {job} and liked {food} very much."
        )
        facts = [
            (f"Where was {name} born?", city),
            (f"In which year was {name} born?", year),
            (f"What did {name} work as?", job),
            (f"What did {name} like?", food),
        ]
        if rng.random() < unanswerable_share:
            question = rng.choice(
                [f"What is the name of {name}'s dog?", f"Where did {name} study?", f"Who married {name}?"]
            )
            examples.append(Example(f"synthetic-{index}", question, context))
        else:
            question, answer = rng.choice(facts)
            start = context.index(f" {answer}") + 1
            examples.append(Example(f"synthetic-{index}", question, context, [answer], [start]))
    return examples


def trimmed_offsets(offsets: list[tuple[int, int]], text: str) -> list[tuple[int, int]]:
    """Token offsets with leading and trailing whitespace removed (an all-space token becomes empty)."""
    trimmed = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        trimmed.append((start, end))
    return trimmed


def encode(
    examples: list[Example], tokenizer: Any, max_length: int, doc_stride: int, with_labels: bool
) -> dict[str, list[Any]]:
    """Tokenise question + context into windows of ``max_length`` overlapping by ``doc_stride`` tokens.

    Returns model inputs plus, per window, ``example_index`` and ``offsets`` (trimmed character offsets,
    ``None`` outside the context) and, with ``with_labels``, ``start_positions`` / ``end_positions``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ExperimentError(
            "span labelling needs a fast tokenizer (offset mappings); pass --tokenizer_name"
        )
    tokenizer.padding_side = "right"
    questions = [e.question.lstrip() for e in examples]
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    for example, ids in zip(
        examples, tokenizer(questions, add_special_tokens=False)["input_ids"], strict=True
    ):
        room = max_length - specials - len(ids)  # context tokens per window
        if room <= doc_stride:
            raise ExperimentError(
                f"question {example.id!r} takes {len(ids)} tokens, leaving {room} context tokens per window of "
                f"--max_seq_length {max_length}; that must exceed --doc_stride {doc_stride}: raise --max_seq_length "
                "or lower --doc_stride"
            )
    encoded = tokenizer(
        questions,
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    mapping = encoded.pop("overflow_to_sample_mapping")
    offsets_all = encoded.pop("offset_mapping")
    features: dict[str, list[Any]] = {key: list(value) for key, value in encoded.items()}
    features["example_index"], features["offsets"] = [], []
    starts, ends = [], []
    for window, example_index in enumerate(mapping):
        example = examples[example_index]
        sequence_ids = encoded.sequence_ids(window)
        trimmed = trimmed_offsets([tuple(o) for o in offsets_all[window]], example.context)
        offsets = [
            o if sid == 1 and o[0] < o[1] else None for o, sid in zip(trimmed, sequence_ids, strict=True)
        ]
        features["example_index"].append(example_index)
        features["offsets"].append(offsets)
        if with_labels:
            start, end = label_span(offsets, example)
            starts.append(start)
            ends.append(end)
    if with_labels:
        features["start_positions"], features["end_positions"] = starts, ends
    return features


def label_span(offsets: list[tuple[int, int] | None], example: Example) -> tuple[int, int]:
    """(start token, end token) of the first gold answer in one window, or (0, 0) when it is not wholly inside."""
    if example.is_impossible:
        return NULL_INDEX, NULL_INDEX
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answers[0])  # exclusive
    context = [(i, o) for i, o in enumerate(offsets) if o is not None]
    if not context or context[0][1][0] > start_char or context[-1][1][1] < end_char:
        return NULL_INDEX, NULL_INDEX
    start = next(i for i, (_, token_end) in context if token_end > start_char)
    end = next(i for i, (token_start, _) in reversed(context) if token_start < end_char)
    return start, end


def decode_span(offsets: list[tuple[int, int] | None], context: str, start: int, end: int) -> str:
    """The context text from token ``start`` to token ``end`` inclusive (character end exclusive)."""
    first, last = offsets[start], offsets[end]
    if first is None or last is None:
        return ""
    return context[first[0] : last[1]]


def predict_answers(
    examples: list[Example],
    features: dict[str, list[Any]],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = True,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """Answer text per question id (``""``: no answer) and the null-minus-best score difference.

    As ``run_qa.py``: the best span over all windows of a question (start ≤ end, at most
    ``max_answer_length`` tokens, inside the context) against the lowest "no answer" score
    ``start_logits[0] + end_logits[0]`` over its windows.
    """
    windows: dict[int, list[int]] = collections.defaultdict(list)
    for window, example_index in enumerate(features["example_index"]):
        windows[example_index].append(window)
    predictions: dict[str, str] = {}
    null_differences: dict[str, float] = {}
    for example_index, example in enumerate(examples):
        best_text, best_score, null_score = "", -np.inf, np.inf
        for window in windows[example_index]:
            starts, ends, offsets = start_logits[window], end_logits[window], features["offsets"][window]
            null_score = min(null_score, float(starts[NULL_INDEX] + ends[NULL_INDEX]))
            top_starts = np.argsort(starts)[::-1][:n_best]
            top_ends = np.argsort(ends)[::-1][:n_best]
            for s in top_starts:
                for e in top_ends:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(starts[s] + ends[e])
                    if score > best_score:
                        best_score, best_text = score, decode_span(offsets, example.context, int(s), int(e))
        difference = null_score - best_score
        null_differences[example.id] = difference
        if version_2_with_negative and (best_score == -np.inf or difference > null_score_diff_threshold):
            predictions[example.id] = ""
        else:
            predictions[example.id] = best_text
    return predictions, null_differences


def load_examples(arguments: SquadArguments) -> tuple[list[Example], list[Example], str]:
    """Train and validation examples and the data source's name (``files`` or ``synthetic``).

    The synthetic set has unanswerable questions: it is always scored as SQuAD v2.
    """
    if bool(arguments.train_file) != bool(arguments.validation_file):
        raise ExperimentError(
            "pass both --train_file and --validation_file, or neither (the synthetic demo set)"
        )
    if arguments.train_file and arguments.validation_file:
        train, validation = read_squad(arguments.train_file), read_squad(arguments.validation_file)
        source = "files"
    else:
        examples = synthetic_squad(DEMO_DATA["train"] + DEMO_DATA["validation"], seed=0)
        train, validation = examples[: DEMO_DATA["train"]], examples[DEMO_DATA["train"] :]
        source = "synthetic"
    if source == "files" and not arguments.version_2_with_negative:
        impossible = [e.id for e in train + validation if e.is_impossible]
        if impossible:
            raise ExperimentError(
                f"{len(impossible)} questions have no answer (first: {impossible[:3]}); that is SQuAD v2 data: "
                "pass --version_2_with_negative"
            )
    if arguments.max_train_samples:
        train = train[: arguments.max_train_samples]
    if arguments.max_eval_samples:
        validation = validation[: arguments.max_eval_samples]
    return train, validation, source


def datasets(
    train: list[Example], validation: list[Example], tokenizer: Any, max_length: int, doc_stride: int
) -> tuple[Any, Any, dict[str, list[Any]]]:
    """Training and evaluation `datasets.Dataset` of windows, and the evaluation windows' features."""
    from datasets import Dataset

    inputs = [
        name
        for name in tokenizer.model_input_names
        if name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    train_features = encode(train, tokenizer, max_length, doc_stride, with_labels=True)
    labelled = [*inputs, "start_positions", "end_positions"]
    train_dataset = Dataset.from_dict({k: train_features[k] for k in labelled if k in train_features})
    eval_features = encode(validation, tokenizer, max_length, doc_stride, with_labels=False)
    eval_dataset = Dataset.from_dict({k: eval_features[k] for k in inputs if k in eval_features})
    return train_dataset, eval_dataset, eval_features
