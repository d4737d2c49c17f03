"""The engine's bounds (issue 24): a token budget, rows per request, fair turns between requests, a bounded
attention queue, chunked prefill, and batches that never hold a cache far wider than their rows need.

Each test names the mutation of the engine that makes it fail.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from ina.serve.engine import (
    Engine,
    OverBudgetError,
    OverloadedError,
    PromptError,
    SamplingParams,
    TooLargeForBudgetError,
    TooManyRowsError,
    memory,
)
from ina.serve.engine.batch import Row
from ina.serve.engine.detokenize import TextStream
from ina.serve.engine.types import Generation
from tests.serve.engine_helpers import TIMEOUT, Events, held, no_eos, tiny_engine

PROMPT = [5, 6, 7, 8, 9]


@pytest.fixture()
def engines() -> Iterator[list[Engine]]:
    """Engines a test builds (with its own limits), shut down after it; one torch thread meanwhile."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.shutdown()
    torch.set_num_threads(threads)


def _engine(engines: list[Engine], **kwargs: object) -> Engine:
    engine = tiny_engine(**kwargs)
    engines.append(engine)
    return engine


def _long(engine: Engine, max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, logit_bias=no_eos(engine))


# ---------------------------------------------------------------- 2. the token budget


def test_the_budget_refuses_a_request_larger_than_itself_and_nothing_is_queued(engines: list[Engine]) -> None:
    """Mutation: no budget check in `Waiting.put` (the request is queued)."""
    engine = _engine(engines, token_budget=100)
    jobs = [(list(range(5, 15)), SamplingParams(max_tokens=50))] * 2  # 2 × (10 + 50) = 120 tokens
    with pytest.raises(TooLargeForBudgetError) as caught:
        engine.submit_many("tiny", jobs, lambda event: None)
    error = caught.value
    assert (
        isinstance(error, PromptError)
        and error.param == "max_tokens"
        and error.code == "exceeds_token_budget"
    )
    assert (error.tokens, error.budget) == (120, 100) and "--token_budget" in str(error)
    assert engine.stats()["queued"] == 0 and engine.stats()["reserved_tokens"] == 0


def test_the_budget_held_by_others_is_a_retry_later_until_they_finish_or_cancel(
    engines: list[Engine],
) -> None:
    """Mutation: `Waiting.release` not called on finishing (the budget never comes back)."""
    engine = _engine(engines, token_budget=100)
    events = Events()
    one = (list(range(5, 15)), _long(engine, 50))  # 60 tokens
    with held(engine):
        first = engine.submit_many("tiny", [one], events.on_event, ["first"])[0]
        with pytest.raises(OverBudgetError) as caught:
            engine.submit_many("tiny", [one], events.on_event, ["refused"])
        assert isinstance(caught.value, OverloadedError) and caught.value.code == "token_budget_full"
        assert (caught.value.tokens, caught.value.reserved, caught.value.budget) == (60, 60, 100)
        assert engine.stats()["reserved_tokens"] == 60
        first.cancel()  # a cancelled request gives its tokens back as soon as the worker sees it
    assert events.wait("first").finish_reason == "cancelled"
    assert engine.stats()["reserved_tokens"] == 0
    engine.submit_many("tiny", [one], events.on_event, ["second"])
    assert events.wait("second").finish_reason == "length"
    assert engine.stats()["reserved_tokens"] == 0


def test_the_default_budget_is_half_the_free_memory_over_twice_the_kv_cache(engines: list[Engine]) -> None:
    """Mutation: keys and values counted once (`2 *` dropped in `kv_bytes_per_token`)."""
    from ina.testing import tiny_config

    config = tiny_config("llama")  # 2 layers, 2 key/value heads of 32 / 4 = 8 dimensions
    assert memory.kv_bytes_per_token(config, torch.float64) == 2 * 2 * 2 * 8 * 8
    assert memory.kv_bytes_per_token(config, torch.bfloat16) == 2 * 2 * 2 * 8 * 2
    free = 10**9
    expected = int(free * memory.MEMORY_FRACTION / (512 * memory.OVERHEAD))
    assert memory.token_budget(config, torch.float64, torch.device("cpu"), free=free) == expected
    engine = _engine(engines)
    available = memory.available_memory(torch.device("cpu"))
    assert available is not None and 0 < engine.limits["token_budget"] <= available // 512


# ---------------------------------------------------------------- 3. rows per request, fair turns


def test_a_request_over_the_row_bound_is_refused_whole(engines: list[Engine]) -> None:
    """Mutation: no row bound in `Waiting.put`."""
    engine = _engine(engines, max_batch_size=4, max_queue=3)
    assert engine.limits["max_rows_per_request"] == 2  # max_batch_size // 2 by default
    jobs = [(PROMPT, SamplingParams(max_tokens=2))] * 3
    with pytest.raises(TooManyRowsError) as caught:
        engine.submit_many("tiny", jobs, lambda event: None)
    assert caught.value.param == "n" and caught.value.code == "too_many_choices"
    assert (caught.value.rows, caught.value.limit) == (3, 2)
    with held(engine):
        engine.submit_many("tiny", jobs[:2], lambda event: None)
        with pytest.raises(OverloadedError):  # 2 waiting + 2 more > max_queue 3: none of them queued
            engine.submit_many("tiny", jobs[:2], lambda event: None)
        assert engine.stats()["queued"] == 2


def test_one_request_never_holds_every_slot(engines: list[Engine]) -> None:
    """A request as large as the batch holds half its slots: one arriving after it starts at once.

    Mutation: `share = max_batch_size` in `Engine.__init__` (the first request fills the batch)."""
    engine = _engine(engines, max_batch_size=4, max_rows_per_request=4)
    events = Events()
    big = [f"big{i}" for i in range(4)]
    with held(engine):
        rows = engine.submit_many("tiny", [(PROMPT, _long(engine, 40))] * 4, events.on_event, big)
    with held(engine):  # the big request is decoding: what it could take, it holds
        assert rows[0].token_ids and engine.stats()["active_rows"] == 2
        engine.submit_many(
            "tiny", [(PROMPT, SamplingParams(max_tokens=3, temperature=0))], events.on_event, ["small"]
        )
    events.wait("small")
    assert events.finished(big) == 0, "the small request waited for the big one"
    for tag in big:
        assert events.wait(tag).finish_reason == "length"


def test_waiting_requests_take_turns_row_by_row(engines: list[Engine]) -> None:
    """Three requests wait (3, 3 and 1 rows) for 4 slots: each gets a row before any gets a second.

    Mutation: `Waiting.take` in arrival order (A1, A2, B1, B2: the one-row request waits)."""
    engine = _engine(engines, max_batch_size=4, max_rows_per_request=3)
    events = Events()
    a, b = ["a0", "a1", "a2"], ["b0", "b1", "b2"]
    with held(engine):
        engine.submit_many("tiny", [(PROMPT, _long(engine, 40))] * 3, events.on_event, a)
        engine.submit_many("tiny", [(PROMPT, _long(engine, 40))] * 3, events.on_event, b)
        engine.submit_many(
            "tiny", [(PROMPT, SamplingParams(max_tokens=3, temperature=0))], events.on_event, ["c"]
        )
    events.wait("c")
    assert events.finished(a + b) == 0
    for tag in a + b:
        events.wait(tag)


# ---------------------------------------------------------------- 4. jobs: bounded, cancellable, one per step


def test_attention_maps_wait_in_a_bounded_queue_and_a_cancelled_one_never_runs(engines: list[Engine]) -> None:
    """Mutation: no `limit` in `Scheduler.add_job` (a third map is queued)."""
    engine = _engine(engines, max_attention_queue=2)
    runs: list[str] = []
    with held(engine):
        first = engine.attention("tiny", "the cat sat")
        second = engine.run_exclusive(lambda: runs.append("second"), limit=2)
        with pytest.raises(OverloadedError) as caught:
            engine.attention("tiny", "the cat sat")
        assert "2 attention maps waiting" in str(caught.value)
        assert engine.stats()["attention_queued"] == 2
        assert second.cancel()  # the client left: its place is free at once
        assert engine.stats()["attention_queued"] == 1
        third = engine.run_exclusive(lambda: runs.append("third"), limit=2)
    assert first.result(TIMEOUT)["tokens"]
    third.result(TIMEOUT)
    assert runs == ["third"] and second.cancelled()


def test_jobs_run_one_per_decode_step(engines: list[Engine]) -> None:
    """A stream advances between two queued jobs (e.g. attention maps), not after all of them.

    Mutation: `_run_jobs(every=True)` on every turn."""
    engine = _engine(engines)
    events = Events()
    seen: list[int] = []
    with held(engine):
        generation = engine.submit("tiny", PROMPT, _long(engine, 30), events.on_event, "stream")
        jobs = [engine.run_exclusive(lambda: seen.append(len(generation.token_ids))) for _ in range(3)]
    for job in jobs:
        job.result(TIMEOUT)
    events.wait("stream")
    assert seen == sorted(seen) and len(set(seen)) == 3, seen


# ---------------------------------------------------------------- 6. chunked prefill


def _rows(engine: Engine, prompts: list[list[int]]) -> list[Row]:
    return [
        Row(
            Generation("tiny", "__base__", p, SamplingParams(), lambda e: None, i),
            0,
            TextStream(engine.prompts.decode),
        )
        for i, p in enumerate(prompts)
    ]


def test_a_prompt_run_in_chunks_gives_the_logits_of_one_pass(engines: list[Engine]) -> None:
    """Mutation: the chunk's attention mask without the columns before it (`mask[:, done:end]`)."""
    engine = _engine(engines)
    prompts = [list(range(5, 5 + n)) for n in (3, 40, 17, 1)]
    with torch.inference_mode():
        whole = engine.runner.prefill(_rows(engine, prompts))
        for chunk in (1, 7, 64):
            prefill = engine.runner.start_prefill(_rows(engine, prompts))
            while (batch := engine.runner.prefill_step(prefill, chunk)) is None:
                pass
            torch.testing.assert_close(batch.logits, whole.logits, rtol=1e-12, atol=1e-12)
            assert [r.position for r in batch.rows] == [r.position for r in whole.rows]
    params = SamplingParams(max_tokens=6, temperature=0)
    long_prompt = list(range(5, 400))
    one_pass = _engine(engines, prefill_chunk_tokens=10_000).generate("tiny", long_prompt, params, TIMEOUT)
    assert engine.generate("tiny", long_prompt, params, TIMEOUT).token_ids == one_pass.token_ids


def test_a_running_stream_keeps_decoding_while_a_long_prompt_is_prefilled(engines: list[Engine]) -> None:
    """A 600-token prompt in chunks of 16 takes 38 turns; the running stream gains a token in each.

    Mutation: `prefill_step(prefill, None)` in `Scheduler._prefill_chunk` (the whole prompt in one pass)."""
    engine = _engine(engines, prefill_chunk_tokens=16)
    events = Events()
    first_token = threading.Event()

    def on_stream(event: object) -> None:
        events.on_event(event)  # type: ignore[arg-type]
        first_token.set()

    stream = engine.submit("tiny", PROMPT, _long(engine, 150), on_stream, "stream")
    assert first_token.wait(TIMEOUT)
    at_start = len(stream.token_ids)
    during: list[int] = []

    def on_long(event: object) -> None:
        if not during:
            during.append(len(stream.token_ids) - at_start)
        events.on_event(event)  # type: ignore[arg-type]

    engine.submit("tiny", [5 + i % 400 for i in range(600)], SamplingParams(max_tokens=1), on_long, "long")
    events.wait("long")
    assert during[0] >= 30, f"the stream got {during[0]} tokens while the long prompt was prefilled"
    assert events.wait("stream").finish_reason == "length"


# ---------------------------------------------------------------- 2. batches hold what their rows need


def test_batches_far_apart_in_width_are_not_merged_and_unused_columns_are_cut(engines: list[Engine]) -> None:
    """Mutations: `can_merge` without the waste check; `ModelRunner.step` without `_trim`."""
    engine = _engine(engines)
    with torch.inference_mode():
        short = engine.runner.prefill(_rows(engine, [list(range(5, 15))]))
        other = engine.runner.prefill(_rows(engine, [list(range(5, 17))]))
        wide = engine.runner.prefill(_rows(engine, [list(range(5, 305))]))
        assert engine.runner.can_merge(short, other)
        assert not engine.runner.can_merge(short, wide)  # 2 rows × 300 columns for 310 tokens
        both = engine.runner.prefill(_rows(engine, [list(range(5, 305)), list(range(5, 15))]))
        alone = engine.runner.prefill(_rows(engine, [list(range(5, 15))]))
        token = int(alone.logits[0].argmax())
        engine.runner.step(both, [1], [0, token])  # the 300-token row leaves
        engine.runner.step(alone, [0], [token])
        assert both.mask.shape[1] == 11 and both.cache.layers[0].keys.shape[2] == 11
        torch.testing.assert_close(both.logits, alone.logits, rtol=1e-12, atol=1e-12)
