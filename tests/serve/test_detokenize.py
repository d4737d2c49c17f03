"""Incremental detokenisation: per-token work does not grow with the answer, and the text is exact.

The tokenizer is real (ina.testing's byte-level BPE, and the embedded SmolLM2's when it is prepared);
its ``decode`` is wrapped to count how many token ids each step hands it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ina.serve.engine import Engine, SamplingParams
from ina.serve.engine.detokenize import MAX_HELD_TOKENS, IncrementalDetokenizer, TextStream

# English, Chinese and emoji: with a byte-level BPE most Chinese characters and every emoji span
# several tokens, so the stream must hold back half-decoded characters.
TEXT = (
    "I put my red bag in the black bag. 这个产品很好，我很喜欢。 What is the colour of my bag? 🙂👍🏽 "
    "质量不好，不推荐！ Tell me a joke about a cat 🐈 and a dog 🐕. 判断下面评论的情感：正面 "
)
ANSWER_TOKENS = 2000
# A step decodes its context (the tokens of the previous step) and its new tokens; neither grows with the answer.
WINDOW = 2 * MAX_HELD_TOKENS


class CountingDecode:
    """``tokenizer.decode`` that records how many token ids each call was given."""

    def __init__(self, tokenizer: Any) -> None:
        self.decode, self.sizes = tokenizer.decode, []

    def __call__(self, ids: list[int], **kwargs: Any) -> str:
        self.sizes.append(len(ids))
        return self.decode(ids, **kwargs)


def _skip_special(decode: Callable[..., str]) -> Callable[[list[int]], str]:
    return lambda ids: decode(ids, skip_special_tokens=True)


def _tokenizers() -> list[Any]:
    from ina.testing import tiny_tokenizer

    found = [pytest.param(tiny_tokenizer, id="tiny-bpe")]

    def smollm() -> Any:
        from transformers import AutoTokenizer

        from ina.embedded.smollm import model_dir

        if not (model_dir() / "tokenizer.json").is_file():
            pytest.skip("the embedded SmolLM2 is not prepared (run scripts/setup)")
        return AutoTokenizer.from_pretrained(str(model_dir()))

    found.append(pytest.param(smollm, id="smollm2"))
    return found


@pytest.fixture(params=_tokenizers())
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return request.param()


def _answer(tokenizer: Any, length: int = ANSWER_TOKENS) -> list[int]:
    ids: list[int] = []
    while len(ids) < length:
        ids += tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return ids[:length]


def test_streams_2000_tokens_with_constant_work_per_token(tokenizer: Any) -> None:
    ids = _answer(tokenizer)
    decode = CountingDecode(tokenizer)
    detokenizer = IncrementalDetokenizer(_skip_special(decode))
    pieces, calls_after = [], []
    for token in ids:
        pieces.append(detokenizer.push(token))
        calls_after.append(len(decode.sizes))
    tail = detokenizer.flush()
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) + tail == full
    assert not any("\ufffd" in piece for piece in pieces[:-MAX_HELD_TOKENS]), (
        "half characters must be held back"
    )
    assert "这个产品很好" in full and "🙂" in full
    # every step decodes a short window: at most WINDOW ids per call, at most two calls per token
    assert max(decode.sizes) <= WINDOW
    assert len(decode.sizes) <= 2 * len(ids) + 1
    # and the work of the last tokens equals that of the first (a full decode would grow 20-fold here)
    first, last = sum(decode.sizes[: calls_after[99]]), sum(decode.sizes[calls_after[-101] :])
    assert last <= 1.5 * first + WINDOW, (first, last)
    # what was sent at any step is exactly the start of the whole answer decoded so far
    for i in range(0, len(ids), 97):
        assert tokenizer.decode(ids[: i + 1], skip_special_tokens=True).startswith("".join(pieces[: i + 1]))


def test_multibyte_text_restreamed_token_by_token(tokenizer: Any) -> None:
    ids = tokenizer("猫🐈 和狗🐕：很喜欢！👍🏽", add_special_tokens=False)["input_ids"]
    assert len(ids) > len("猫🐈 和狗🐕：很喜欢！👍🏽") // 2, "the characters should span several tokens"
    stream = TextStream(_skip_special(tokenizer.decode))
    pieces = [stream.push(token) for token in ids]
    assert all(not stopped for _, stopped in pieces)
    assert all("\ufffd" not in text for text, _ in pieces)
    text, stopped = stream.close()
    assert "".join(piece for piece, _ in pieces) + text == "猫🐈 和狗🐕：很喜欢！👍🏽" and not stopped


def _stream(tokenizer: Any, ids: list[int], stops: list[str]) -> tuple[str, bool, int]:
    """Stream ``ids`` with ``stops``; the text sent, whether it stopped, and after how many tokens."""
    stream = TextStream(_skip_special(tokenizer.decode), stops)
    sent = []
    for n, token in enumerate(ids, start=1):
        text, stopped = stream.push(token)
        sent.append(text)
        assert len(stream.tail) <= max(map(len, stops)) - 1  # only a short tail is searched again
        if stopped:
            return "".join(sent), True, n
    text, stopped = stream.close()
    return "".join(sent) + text, stopped, len(ids)


def test_stop_strings_split_across_tokens_are_found(tokenizer: Any) -> None:
    ids = _answer(tokenizer, 400)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    # a stop string made of the end of one token's text and the start of the next one's
    boundary = next(
        i
        for i in range(40, len(ids))
        if len(tokenizer.decode(ids[:i]).rstrip()) == len(tokenizer.decode(ids[:i]))
        and len(tokenizer.decode(ids[i - 1 : i])) >= 2
        and len(tokenizer.decode(ids[i : i + 1])) >= 2
    )
    cut = len(tokenizer.decode(ids[:boundary]))
    for stop in (full[cut - 2 : cut + 2], "很喜欢", "🐕."):
        start = full.index(stop)
        text, stopped, used = _stream(tokenizer, ids, ["never-there", stop])
        assert stopped and text == full[:start], stop
        assert len(tokenizer.decode(ids[:used])) < start + len(stop) + 8, "the stop was found late"


def test_text_that_may_begin_a_stop_string_is_held_back(tokenizer: Any) -> None:
    ids = tokenizer("the black bag. the black cat", add_special_tokens=False)["input_ids"]
    text, stopped, _ = _stream(tokenizer, ids, ["black cat"])
    assert stopped and text == "the black bag. the "
    text, stopped, _ = _stream(tokenizer, ids, ["black dog"])
    assert not stopped and text == "the black bag. the black cat"


def test_engine_decodes_incrementally() -> None:
    """The engine's own decode loop hands the tokenizer short windows, and its text is the full decode."""
    from ina.testing import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    decode = CountingDecode(tokenizer)
    tokenizer.decode = decode  # the engine decodes through this instance
    engine = Engine(tiny_model("llama", max_position_embeddings=1024), tokenizer, base_model_id="tiny")
    engine.eos_ids.clear()  # a random model might end early; this answer runs to max_tokens
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prompt = engine.encode_text("这个产品很好 🙂")
        result = engine.generate("tiny", prompt, SamplingParams(max_tokens=600, temperature=1.0, seed=1), 120)
    finally:
        engine.shutdown()
        torch.set_num_threads(threads)
    assert result.completion_tokens == 600 and result.finish_reason == "length"
    assert result.text == decode.decode(result.token_ids, skip_special_tokens=True)
    assert max(decode.sizes) <= WINDOW and len(decode.sizes) <= 2 * 600 + 1
