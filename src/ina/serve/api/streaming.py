"""From the engine's thread to a request: the generations of one request, and server-sent events."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import AsyncIterator
from typing import TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ina.serve.api import responses
from ina.serve.api.errors import APIError, ClientGone, from_engine
from ina.serve.engine import Engine, EngineError, Event, SamplingParams

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there
T = TypeVar("T")


async def wait_for(future: concurrent.futures.Future[T], request: Request) -> T:
    """``future``'s result (e.g. engine work queued between decode steps); if the client goes away first,
    the future is cancelled (a job not started yet never runs) and ClientGone raised."""
    waiting = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not future.done():
            future.cancel()


class Run:
    """Generations of one request (``n`` choices, or one per prompt), submitted together.

    Events come back from the engine's thread into this request's event loop through a queue.
    """

    def __init__(self, engine: Engine, model: str, jobs: list[tuple[list[int], SamplingParams]]) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.texts = [""] * len(jobs)
        self.finals: list[Event | None] = [None] * len(jobs)

        def on_event(event: Event) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, event)

        self.generations = []
        try:
            for i, (ids, params) in enumerate(jobs):
                self.generations.append(engine.submit(model, ids, params, on_event, tag=i))
        except EngineError as error:
            self.cancel()
            raise from_engine(error) from None

    def cancel(self) -> None:
        for generation in self.generations:
            generation.cancel()

    async def events(self, request: Request | None = None) -> AsyncIterator[Event]:
        """Every event until all generations have finished.

        With ``request`` (a non-streamed answer), checks every ``DISCONNECT_POLL_S`` whether its client
        is gone, whether events keep coming or not, and if so cancels the generations (ClientGone).
        """
        remaining = len(self.generations)
        getter: asyncio.Task[Event] | None = None
        checked = time.monotonic()
        try:
            while remaining:
                if request is not None and time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        raise ClientGone
                if getter is None:
                    getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
                if not done:
                    continue
                event, getter = getter.result(), None
                self.texts[event.tag] += event.text
                if event.finish_reason == "error":
                    raise APIError(
                        500, f"generation failed: {event.error}", "server_error", None, "engine_error"
                    )
                if event.finish_reason is not None:
                    self.finals[event.tag] = event
                    remaining -= 1
                yield event
        finally:
            if getter is not None:
                getter.cancel()
            self.cancel()

    async def collect(self, request: Request) -> tuple[list[str], list[Event]]:
        """Wait for every generation (cancelling them all if the client goes away)."""
        async for _ in self.events(request):
            pass
        return self.texts, [event for event in self.finals if event is not None]

    def usage(self, prompt_tokens: int) -> responses.Usage:
        completion = sum(event.completion_tokens for event in self.finals if event is not None)
        return responses.Usage.of(prompt_tokens, completion)


def finish_reason(event: Event) -> str:
    """OpenAI's finish reasons: "length", else "stop" (EOS, a stop string, or cancelled)."""
    return "length" if event.finish_reason == "length" else "stop"


def sse(chunks: AsyncIterator[BaseModel], run: Run) -> StreamingResponse:
    """Server-sent events: one ``data: {json}`` per chunk, then ``data: [DONE]``.

    If the client disconnects, the server stops iterating and ``run.cancel()`` frees its rows.
    """

    async def body() -> AsyncIterator[str]:
        try:
            async for item in chunks:
                yield f"data: {json.dumps(responses.to_json(item), ensure_ascii=False)}\n\n"
        except APIError as error:
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            run.cancel()
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
