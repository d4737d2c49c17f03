"""Mixed-adapter batching: batched answers equal lone answers and an independent `generate`; slots are freed."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import torch

from ina.serve.engine import Event, SamplingParams
from tests.serve.engine_helpers import TIMEOUT, Captured, held

PROMPTS = [
    "I put my red bag in the black bag.",
    "What is the colour of my bag?",
    "Tell me a joke about a cat and a dog.",
    "The quick brown fox",
    "Below is an instruction",
    "positive negative neutral",
    "0 1 2 3",
    "这个产品很好",
]


def _reference(engine: object, model: str, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens from Hugging Face `generate` with PEFT's own adapter routing (not our decode loop)."""
    adapter = engine.resolve(model)

    def run() -> list[int]:
        input_ids = torch.tensor([prompt_ids])
        output = engine.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            adapter_names=[adapter],
            do_sample=False,
            max_new_tokens=max_tokens,
            pad_token_id=engine.pad_id,
        )
        return output[0, len(prompt_ids) :].tolist()

    return engine.run_exclusive(run).result(timeout=60)


def test_batched_rows_match_hf_generate(engine: object) -> None:
    """Several adapters and prompt lengths in one batch; each row equals `generate` run alone."""
    jobs = [(model, engine.encode_text(p)) for p in PROMPTS[:4] for model in engine.model_ids]
    params = SamplingParams(max_tokens=8, temperature=0)
    results = {}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {pool.submit(engine.generate, m, ids, params, 60): (m, tuple(ids)) for m, ids in jobs}
        for future, key in futures.items():
            results[key] = future.result()
    assert engine.stats()["max_adapters_in_step"] == 3
    for (model, ids), result in results.items():
        expected = _reference(engine, model, list(ids), 8)
        eos = next((i for i, t in enumerate(expected) if t in engine.eos_ids), None)
        assert result.token_ids == (expected if eos is None else expected[: eos + 1]), (model, ids)


def _runs_to_length(engine: object, max_tokens: int) -> tuple[str, str, list[int]]:
    """A (model, prompt, its ids) whose greedy answer runs to ``max_tokens`` (only cancellation ends it early)."""
    for prompt in PROMPTS:
        for model in engine.model_ids:
            ids = engine.encode_text(prompt)
            params = SamplingParams(max_tokens=max_tokens, temperature=0)
            if engine.generate(model, ids, params).finish_reason == "length":
                return model, prompt, ids
    raise AssertionError("no prompt runs to max_tokens on the tiny model")


def test_late_request_joins_the_running_batch(engine: object) -> None:
    """A request arriving mid-decode is merged into the running batch (KV cache left-padded) and still
    answers exactly as it does alone."""
    model, _, long_ids = _runs_to_length(engine, 48)
    short_ids = engine.encode_text(PROMPTS[6])
    greedy = SamplingParams(max_tokens=48, temperature=0)
    alone_long = engine.generate(model, long_ids, greedy)
    alone_short = engine.generate("ina09", short_ids, SamplingParams(max_tokens=4, temperature=0))
    merges = engine.stats()["merges"]
    started, done = threading.Event(), threading.Event()
    parts: list[str] = []

    def on_event(event: object) -> None:
        parts.append(event.text)
        started.set()
        if event.finish_reason is not None:
            done.set()

    engine.submit(model, long_ids, greedy, on_event)
    assert started.wait(30)
    late = engine.generate("ina09", short_ids, SamplingParams(max_tokens=4, temperature=0), timeout=60)
    running = not done.is_set()
    assert done.wait(60)
    assert running, "the long request should still be decoding when the short one finished"
    assert engine.stats()["merges"] > merges
    assert late.token_ids == alone_short.token_ids
    assert "".join(parts) == alone_long.text


def test_32_concurrent_requests_across_two_adapters(client: openai.OpenAI, engine: object) -> None:
    """32 concurrent chat requests (two adapters) all succeed, each equal to the same request sent alone."""
    requests = [(model, prompt) for prompt in PROMPTS for model in ("ina03", "ina09")] * 2  # 32

    def ask(job: tuple[str, str]) -> str:
        model, prompt = job
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=10, temperature=0
        )
        return reply.choices[0].message.content or ""

    alone = {job: ask(job) for job in set(requests)}  # one at a time
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(ask, requests))
    assert together == [alone[job] for job in requests]
    assert engine.stats()["max_rows_in_step"] >= 8, "concurrent requests must share decode steps"


def test_client_disconnect_mid_stream_frees_its_slot(
    server: object, engine: object, monkeypatch: object
) -> None:
    """The worker waits after the first text it streams until the server has seen the client go, so the
    row is cancelled mid-decode whatever the load (it would otherwise run to 64 tokens)."""
    model, prompt, _ = _runs_to_length(engine, 64)
    streamed, go_on = threading.Event(), threading.Event()

    def listen(listener: Callable[[Event], None]) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            listener(event)
            if event.text and event.finish_reason is None and not streamed.is_set():
                streamed.set()
                go_on.wait(TIMEOUT)  # the worker, between two decode steps

        return on_event

    captured = Captured(engine, monkeypatch, listen)
    body = {"model": model, "prompt": prompt, "max_tokens": 64, "temperature": 0, "stream": True}
    before = engine.stats()["cancelled"]
    try:
        with (
            httpx.Client(timeout=TIMEOUT) as http,
            http.stream("POST", f"{server.url}/v1/completions", json=body) as reply,
        ):
            for line in reply.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                    break  # got some text: hang up now
        assert captured.cancelled.wait(TIMEOUT), "the server did not cancel the stream of a client that left"
    finally:
        go_on.set()
    generation = captured.first()
    assert generation.finished.wait(TIMEOUT)
    assert 0 < len(generation.token_ids) < 64
    assert engine.stats()["cancelled"] == before + 1
    assert engine.stats()["active_rows"] == 0
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_client_gone_before_a_non_streamed_answer_frees_its_slot(
    server: object, engine: object, monkeypatch: object
) -> None:
    """The worker is held while a client posts a non-streamed request and hangs up: the request is
    cancelled while it waits, so it never takes a batch slot."""
    import socket

    captured = Captured(engine, monkeypatch)
    before = engine.stats()
    body = json.dumps({"model": "ina03", "prompt": "The quick", "max_tokens": 64, "temperature": 0}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with held(engine):
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(head + body)
            generation = captured.first()  # the server has read the request and queued it
        assert captured.cancelled.wait(TIMEOUT), "the server did not cancel the request of a client that left"
    assert generation.finished.wait(TIMEOUT)
    after = engine.stats()
    assert generation.token_ids == [] and after["prefills"] == before["prefills"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["active_rows"] == 0
