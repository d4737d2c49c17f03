"""Requests waiting for a batch slot, taken in turns, and the token budget that bounds what the engine holds.

A request (its ``n`` choices, or one row per prompt) is accepted whole or not at all: it may ask for at most
``max_rows_per_request`` rows, and its rows must fit the token budget (each row holds ``len(prompt) +
max_tokens`` tokens of it from acceptance until it finishes; see :mod:`~ina.serve.engine.memory`). Waiting
rows are kept per request and taken round-robin, one row per request per turn, so a request with many
rows cannot make the others wait behind all of them; and a request holds at most ``share`` batch slots at
once, so it cannot take every slot for as long as its rows run.
"""

from __future__ import annotations

import collections
import threading
import time

from ina.serve.engine.types import (
    Generation,
    OverBudgetError,
    OverloadedError,
    TooLargeForBudgetError,
    TooManyRowsError,
)


class Waiting:
    """The queue of waiting rows (at most ``max_queue``) and the token budget (thread-safe)."""

    def __init__(self, max_queue: int, token_budget: int, max_rows_per_request: int) -> None:
        self.max_queue, self.token_budget = max_queue, token_budget
        self.max_rows_per_request = max_rows_per_request
        self.reserved = 0  # tokens held by accepted rows that have not finished
        self._holders: set[int] = set()  # ids of the generations holding budget
        self._requests: collections.OrderedDict[int, collections.deque[Generation]] = (
            collections.OrderedDict()
        )
        self._count = 0
        self._woken = False
        self._condition = threading.Condition()

    def __len__(self) -> int:
        return self._count

    def put(self, generations: list[Generation]) -> None:
        """Accept all of ``generations`` (one request) or raise and accept none.

        Raises :class:`TooManyRowsError` or :class:`TooLargeForBudgetError` for a request no server state
        could accept, :class:`OverloadedError` (queue full) or :class:`OverBudgetError` (the budget is held
        by others now) for one to retry later.
        """
        rows, tokens = len(generations), sum(g.cost for g in generations)
        if rows > self.max_rows_per_request:
            raise TooManyRowsError(rows, self.max_rows_per_request)
        if tokens > self.token_budget:
            raise TooLargeForBudgetError(tokens, self.token_budget)
        with self._condition:
            if self._count + rows > self.max_queue:
                raise OverloadedError(
                    f"the server is busy ({self._count} completions waiting, at most {self.max_queue}); retry later"
                )
            if self.reserved + tokens > self.token_budget:
                raise OverBudgetError(tokens, self.token_budget, self.reserved)
            self.reserved += tokens
            for generation in generations:
                self._holders.add(generation.id)
                self._requests.setdefault(generation.request, collections.deque()).append(generation)
            self._count += rows
            self._condition.notify_all()

    def release(self, generation: Generation) -> None:
        """``generation`` finished: its tokens go back to the budget (once; no-op if it held none)."""
        with self._condition:
            if generation.id in self._holders:
                self._holders.discard(generation.id)
                self.reserved -= generation.cost

    def take(self, free: int, share: int, running: collections.Counter[int]) -> list[Generation]:
        """Up to ``free`` rows, one per request in turn, none for a request already running ``share`` rows.

        ``running``: rows in flight per request (updated with what is taken).
        """
        taken: list[Generation] = []
        with self._condition:
            progress = True
            while len(taken) < free and progress:
                progress = False
                for request in list(self._requests):
                    if len(taken) >= free:
                        break
                    if running[request] >= share:
                        continue
                    rows = self._requests[request]
                    taken.append(rows.popleft())
                    running[request] += 1
                    progress = True
                    if rows:
                        self._requests.move_to_end(request)  # the next turn starts with the others
                    else:
                        del self._requests[request]
            self._count -= len(taken)
        return taken

    def drop_cancelled(self) -> list[Generation]:
        """Remove the waiting rows whose client cancelled them, and return them."""
        dropped: list[Generation] = []
        with self._condition:
            for request, rows in list(self._requests.items()):
                kept = collections.deque(g for g in rows if not g.cancelled)
                if len(kept) < len(rows):
                    dropped += [g for g in rows if g.cancelled]
                    if kept:
                        self._requests[request] = kept
                    else:
                        del self._requests[request]
            self._count -= len(dropped)
        return dropped

    def drain(self) -> list[Generation]:
        """Remove and return every waiting row (the worker is stopping)."""
        with self._condition:
            rows = [g for queue in self._requests.values() for g in queue]
            self._requests.clear()
            self._count = 0
        return rows

    def wait(self, timeout: float) -> None:
        """Block until a row waits or :meth:`wake` is called, at most ``timeout`` seconds."""
        with self._condition:
            if not self._count and not self._woken:
                self._condition.wait(timeout)
            self._woken = False

    def wait_for(self, rows: int, seconds: float) -> None:
        """Block until ``rows`` rows wait, at most ``seconds`` (the batch window of an idle worker)."""
        deadline = time.perf_counter() + seconds
        with self._condition:
            while self._count < rows and (remaining := deadline - time.perf_counter()) > 0:
                self._condition.wait(remaining)

    def wake(self) -> None:
        """Wake an idle worker (new work that is not a row, e.g. a job)."""
        with self._condition:
            self._woken = True
            self._condition.notify_all()
