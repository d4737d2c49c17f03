"""ina's offline evaluation data are held out of what `ina finetune` trains on."""

from __future__ import annotations

import json

import pytest

from ina.embedded.instruct_data import DATA_FILE, ensure_dataset
from ina.evaluate import heldout


def _rows(name: str) -> list[dict]:
    return list(heldout.dataset(name)["test"])


def test_sentiment_reviews_are_none_of_the_training_records_and_balanced() -> None:
    training = {record["input"] for record in json.loads((ensure_dataset() / DATA_FILE).read_text("utf-8"))}
    for name in ("sentiment_en", "sentiment_zh"):
        rows = _rows(name)
        reviews = [row["review"] for row in rows]
        assert not set(reviews) & training, f"{name} overlaps the embedded instruction data"
        assert len(set(reviews)) == len(reviews) == 2 * heldout.PER_CLASS
        assert sum(row["label"] for row in rows) == heldout.PER_CLASS
    english = _rows("sentiment_en")
    assert all((row["rating"] > 0) == bool(row["label"]) and abs(row["rating"]) >= 1 for row in english)


def test_unknown_data_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no held-out evaluation data named 'train'"):
        heldout.dataset("train")


def test_instructions_are_exactly_what_ina_finetune_holds_out() -> None:
    from ina.finetune.arguments import resolve
    from ina.finetune.dataset import prepare_data
    from ina.foundation.models import load_tokenizer, resolve_base_model

    options, _ = resolve({}, [])  # `ina finetune` with no flags
    prepared = prepare_data(
        options, load_tokenizer(resolve_base_model(options.base_model)), log=lambda _: None
    )
    assert [conversation.alpaca for conversation in prepared.heldout] == _rows("instructions")
