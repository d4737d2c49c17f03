"""Helpers for serve tests: a tiny engine, holding its worker between steps, collecting events, a live
server on an engine."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ina.serve.engine import Engine, Event, Generation
from ina.serve.server import LiveServer

TIMEOUT = 60  # seconds any wait may take on a loaded 2-core machine before a test fails


def tiny_engine(**kwargs: Any) -> Engine:
    """The base tiny LLaMA (float64: no greedy ties between batched and lone rows) behind an engine."""
    from ina.testing import tiny_model, tiny_tokenizer

    return Engine(tiny_model("llama").double(), tiny_tokenizer(), base_model_id="tiny", **kwargs)


def no_eos(engine: Engine) -> dict[int, float]:
    """A ``logit_bias`` that bans every EOS token: the row runs to ``max_tokens``."""
    return dict.fromkeys(engine.eos_ids, -100.0)


@contextlib.contextmanager
def held(engine: Engine) -> Iterator[None]:
    """The worker blocked between two decode steps while the block runs; it goes on after."""
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(TIMEOUT)

    future = engine.run_exclusive(hold)
    assert started.wait(TIMEOUT), "the worker did not reach the holding job"
    try:
        yield
    finally:
        gate.set()
        future.result(TIMEOUT)


@contextlib.contextmanager
def live_server(engine: Engine, serve_files: Any, **settings: Any) -> Iterator[LiveServer]:
    """The HTTP API on ``engine`` in a live server: ``serve_files``' base and adapters, no API key, and
    ``settings`` for the rest (or instead of those)."""
    from ina.serve.api import create_app
    from ina.serve.settings import ServeSettings

    values = {
        "base_model": str(serve_files.base),
        "adapters": serve_files.adapters,
        "api_key": "",
        **settings,
    }
    with LiveServer(create_app(engine, ServeSettings(**values))) as server:
        yield server


class Events:
    """Collects the events of generations submitted with ``self.on_event``; one ``done`` event per tag."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()
        self.done: dict[Any, threading.Event] = {}
        self.finals: dict[Any, Event] = {}

    def on_event(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)
            if event.finish_reason is not None:
                self.finals[event.tag] = event
            self.done.setdefault(event.tag, threading.Event())
        if event.finish_reason is not None:
            self.done[event.tag].set()

    def wait(self, tag: Any) -> Event:
        with self.lock:
            done = self.done.setdefault(tag, threading.Event())
        assert done.wait(TIMEOUT), f"generation {tag!r} did not finish"
        return self.finals[tag]

    def finished(self, tags: list[Any]) -> int:
        with self.lock:
            return sum(tag in self.finals for tag in tags)


class Captured:
    """Every generation the engine accepts from now on (wraps ``engine.waiting.put``).

    ``listen``, if given, wraps each generation's listener before the worker can see it; ``cancelled``
    is set when any of them is cancelled (e.g. by the API, when its client has gone).
    """

    def __init__(
        self,
        engine: Engine,
        monkeypatch: Any,
        listen: Callable[[Callable[[Event], None]], Callable[[Event], None]] | None = None,
    ) -> None:
        self.generations: list[Generation] = []
        self.accepted, self.cancelled = threading.Event(), threading.Event()
        put = engine.waiting.put

        def capture(generations: list[Generation]) -> None:
            for generation in generations:
                if listen is not None:
                    generation.on_event = listen(generation.on_event)
                cancel = generation.cancel

                def cancelled(cancel: Callable[[], None] = cancel) -> None:
                    cancel()
                    self.cancelled.set()

                generation.cancel = cancelled  # type: ignore[method-assign]
            put(generations)
            self.generations += generations
            self.accepted.set()

        monkeypatch.setattr(engine.waiting, "put", capture)

    def first(self) -> Generation:
        assert self.accepted.wait(TIMEOUT), "the server never submitted the request"
        return self.generations[0]


def greedy_reference(model: torch.nn.Module, prompt: list[int], steps: int, adjust: Any = None) -> list[int]:
    """Greedy tokens by full recomputation (no KV cache, no batching): ``adjust(logits, generated)``
    may change each step's float64 logits first."""
    ids = list(prompt)
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()  # (V,)
            if adjust is not None:
                logits = adjust(logits, generated)
            token = int(logits.argmax())
            generated.append(token)
            ids.append(token)
    return generated
