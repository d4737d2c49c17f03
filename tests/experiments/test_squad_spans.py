"""Span labelling round trips (label gold spans, decode back to the exact answer text) for WordPiece,
byte-level BPE and SentencePiece-style Unigram tokenizers, with long contexts split into windows."""

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ina.embedded.minilm import model_path
from ina.experiments.common import ExperimentError
from ina.experiments.squad_data import (
    NULL_INDEX,
    Example,
    decode_span,
    encode,
    predict_answers,
    synthetic_squad,
)
from ina.testing import tiny_tokenizer

EXTRA = [
    # answer at the very start, answer at the very end before a full stop, multi-word, non-ASCII, digits
    Example("start", "Who came?", "Marie Curie came to Warsaw.", ["Marie Curie"], [0]),
    Example("end", "Where to?", "Marie Curie came to Warsaw.", ["Warsaw"], [20]),
    Example("accent", "Which city?", "She was born in Kraków, then left.", ["Kraków"], [16]),
    Example("number", "When?", "The bridge opened in 1937 after four years of work.", ["1937"], [21]),
    Example("none", "Who paid?", "The bridge opened in 1937 after four years of work."),
]


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer (Unigram model, ``▁`` Metaspace pieces, [CLS] q [SEP] c [SEP]) trained here."""
    corpus = [f"{e.question} {e.context}" for e in synthetic_squad(80, seed=3) + EXTRA]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]"],
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", cls_token="[CLS]", sep_token="[SEP]"
    )


TOKENIZERS = {
    "wordpiece": lambda: AutoTokenizer.from_pretrained(model_path()),  # BERT (MiniLM), lowercasing
    "byte-bpe": tiny_tokenizer,  # GPT-2/RoBERTa style; offsets include the leading space
    "sentencepiece-unigram": unigram_tokenizer,  # DeBERTa-v3/T5 style ▁ pieces
}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request):
    return TOKENIZERS[request.param]()


def test_gold_spans_round_trip_through_windows(tokenizer):
    examples = synthetic_squad(40, seed=1) + EXTRA
    # windows with room for 14 context tokens: every context needs several
    longest_question = max(
        len(tokenizer(e.question, add_special_tokens=False)["input_ids"]) for e in examples
    )
    max_length = longest_question + tokenizer.num_special_tokens_to_add(pair=True) + 14
    features = encode(examples, tokenizer, max_length=max_length, doc_stride=6, with_labels=True)
    assert len(features["input_ids"]) > len(examples)  # long contexts really were split
    labelled = set()
    for window, index in enumerate(features["example_index"]):
        example, offsets = examples[index], features["offsets"][window]
        start, end = features["start_positions"][window], features["end_positions"][window]
        if example.is_impossible:
            assert (start, end) == (NULL_INDEX, NULL_INDEX)
            continue
        first, last = (
            offsets[i]
            for i in (min(i for i, o in enumerate(offsets) if o), max(i for i, o in enumerate(offsets) if o))
        )
        inside = (
            first[0] <= example.answer_starts[0]
            and example.answer_starts[0] + len(example.answers[0]) <= last[1]
        )
        if not inside:
            assert (start, end) == (NULL_INDEX, NULL_INDEX)
            continue
        assert decode_span(offsets, example.context, start, end) == example.answers[0]
        labelled.add(example.id)
    assert labelled == {e.id for e in examples if not e.is_impossible}  # every answer lands in some window


def test_post_processing_picks_the_labelled_span_or_no_answer(tokenizer):
    examples = synthetic_squad(20, seed=2) + EXTRA
    labels = encode(examples, tokenizer, max_length=64, doc_stride=16, with_labels=True)
    features = encode(examples, tokenizer, max_length=64, doc_stride=16, with_labels=False)
    width = max(len(ids) for ids in features["input_ids"])
    start_logits = np.full((len(features["input_ids"]), width), -5.0)
    end_logits = np.full_like(start_logits, -5.0)
    for window, (s, e) in enumerate(zip(labels["start_positions"], labels["end_positions"], strict=True)):
        start_logits[window, s] += 10  # a confident model: the gold span (or the null position) wins
        end_logits[window, e] += 10
    predictions, _ = predict_answers(examples, features, start_logits, end_logits)
    assert predictions == {e.id: (e.answers[0] if e.answers else "") for e in examples}


def test_question_too_long_for_the_window_is_a_clear_error():
    example = Example("long", "why " * 40 + "?", "Because.", ["Because"], [0])
    with pytest.raises(ExperimentError, match=r"--max_seq_length 32.*--doc_stride 8"):
        encode([example], tiny_tokenizer(), max_length=32, doc_stride=8, with_labels=True)
