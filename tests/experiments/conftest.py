import csv
import random

import pytest

from ina.testing import tiny_model, tiny_tokenizer

WORDS = {1: ["good", "great", "fun", "charming"], 0: ["bad", "dull", "awful", "boring"]}


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A tiny random BERT for sequence classification with the tiny byte-BPE tokenizer, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_model("bert", head="seq-cls").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qa_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert-qa")
    tiny_model("bert", head="qa").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_sentiment_csv(path, rows=24, seed=0):
    """A small labelled sentiment CSV (sentence,label) with an obvious signal."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["sentence", "label"])
        for i in range(rows):
            label = i % 2
            writer.writerow(
                [f"the film was {rng.choice(WORDS[label])} and {rng.choice(WORDS[label])}", label]
            )
    return path


@pytest.fixture
def sentiment_files(tmp_path):
    return write_sentiment_csv(tmp_path / "train.csv", 24, 0), write_sentiment_csv(
        tmp_path / "dev.csv", 12, 1
    )


@pytest.fixture
def sentiment_csv():
    """`write_sentiment_csv` for tests that write their own files."""
    return write_sentiment_csv
