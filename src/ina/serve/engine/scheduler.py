"""The worker thread: admits queued requests, prefills and merges batches, decodes, streams, finishes rows.

Every model call happens on this one thread (PEFT's per-row adapter routing is model-wide state, so
two threads must never run the model at once). Requests wait in a bounded queue; an idle worker
collects them for ``batch_window_s`` and prefills them as one batch. Requests that arrive while a
batch is decoding are prefilled as their own small batch and merged into the running one, so nobody
waits for a long generation to finish. Each row stops on its own (EOS, a stop string,
``max_tokens``, the context, or cancellation, which frees its slot at the next step).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from ina.serve.engine.batch import Batch, ModelRunner, Row
from ina.serve.engine.detokenize import TextStream
from ina.serve.engine.sampling import SamplingError, check_seed, next_tokens
from ina.serve.engine.types import Event, Generation, Stats

logger = logging.getLogger("ina.serve")


@dataclasses.dataclass
class Job:
    """A function to run on the worker thread between decode steps (e.g. attention maps)."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Scheduler:
    """Owns the request queue and the worker thread that runs ``runner`` on batches of rows."""

    def __init__(
        self,
        runner: ModelRunner,
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        context_length: int,
        max_batch_size: int,
        batch_window_s: float,
        max_queue: int,
        stats: Stats,
    ) -> None:
        self.runner, self.decode, self.eos_ids = runner, decode, eos_ids
        self.context_length, self.max_batch_size, self.batch_window_s = (
            context_length,
            max_batch_size,
            batch_window_s,
        )
        self.stats = stats
        self.queue: queue.Queue[Generation | None] = queue.Queue(maxsize=max_queue)
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._batches: list[Batch] = []  # the worker's batches, as of its last turn (read by `active_rows`)
        self._admitted: list[Row] = []  # rows taken from the queue but not yet in a batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._thread_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._work, name="ina-serve-engine", daemon=True)
                self._thread.start()

    def shutdown(self, timeout: float) -> None:
        """Stop the worker; rows still running finish as "cancelled"."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def active_rows(self) -> int:
        """Rows being decoded and not finished (a cancelled or failed row stops counting at once)."""
        rows = [row for batch in list(self._batches) for row in list(batch.rows)] + list(self._admitted)
        return len({id(row) for row in rows if not row.generation.finished.is_set()})

    def add_job(self, job: Job) -> None:
        self.jobs.put(job)
        self.wake()

    def wake(self) -> None:
        """Wake an idle worker (a full queue means a busy worker, which sees new work soon)."""
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)

    # ----------------------------------------------------------------- the loop

    def _work(self) -> None:
        batches: list[Batch] = []
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    batches = self._cycle(batches)
                except Exception as error:  # a bug here must not kill the worker (and every stream with it)
                    logger.exception("the decode loop failed; failing the rows in flight")
                    for batch in batches:
                        self._fail(batch.rows, error)
                    self._fail(self._admitted, error)
                    batches, self._admitted = [], []
                self._batches = batches
            for batch in batches:
                for row in batch.rows:
                    self._finish(row, "cancelled")

    def _cycle(self, batches: list[Batch]) -> list[Batch]:
        """One turn of the loop: jobs, admitting and prefilling new rows, one decode step of every batch."""
        self._run_jobs()
        active = sum(len(b.rows) for b in batches)
        admitted = self._admitted = self._admit(block=not batches, free=self.max_batch_size - active)
        if admitted:
            try:
                batch = self.runner.prefill(admitted)
            except Exception as error:  # a model failure must not kill the server
                logger.exception("prefill failed")
                self._fail(admitted, error)
            else:
                if batches and self.runner.can_merge(batches[0], batch):
                    batches[0] = self.runner.merge(batches[0], batch)
                else:
                    batches.append(batch)
        self._admitted = []  # from here on, every row in flight is in `batches`
        for batch in list(batches):
            try:
                self._step(batch)
            except Exception as error:
                logger.exception("decode step failed")
                self._fail(batch.rows, error)
                batch.rows = []
        return [b for b in batches if b.rows]

    def _run_jobs(self) -> None:
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.fn())
                except Exception as error:
                    job.future.set_exception(error)

    def _admit(self, block: bool, free: int) -> list[Row]:
        """Take up to ``free`` queued requests; when idle, wait for one, then ``batch_window`` for more."""
        taken: list[Generation] = []
        if free <= 0:
            return []
        if block:
            try:
                first = self.queue.get(timeout=0.5)
            except queue.Empty:
                return []
            if first is not None:
                taken.append(first)
            deadline = time.perf_counter() + self.batch_window_s
            while len(taken) < free:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self.queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is not None:
                    taken.append(item)
        while len(taken) < free:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                taken.append(item)
        rows = []
        for generation in taken:
            try:
                seed = generation.params.seed
                check_seed(seed)
                row = Row(
                    generation,
                    seed if seed is not None else random.getrandbits(63),
                    TextStream(self.decode, generation.params.stop),
                )
            except Exception as error:  # this request alone
                self._finish_generation(generation, "error", error=_describe(error))
                continue
            if generation.cancelled:
                self._finish(row, "cancelled")
            else:
                rows.append(row)
        return rows

    def _step(self, batch: Batch) -> None:
        """Pick each row's next token, stream its text, drop finished rows, run the next forward pass."""
        rows = batch.rows
        tokens = next_tokens(batch.logits, [r.generation.params for r in rows], [r.generator for r in rows])
        keep, fed = [], []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if row.generation.cancelled:
                self._finish(row, "cancelled")
            elif isinstance(token, Exception):  # this row's sampling failed; the others go on
                self._finish(row, "error", error=_describe(token))
            else:
                try:
                    finished = self._advance(row, token)
                except Exception as error:  # e.g. detokenising: this row only
                    logger.exception("generation %s failed", row.generation.id)
                    self._finish(row, "error", error=_describe(error))
                    finished = True
                if not finished:
                    keep.append(i)
            fed.append(token if isinstance(token, int) else 0)  # only kept rows' tokens are fed
        self.stats.add("steps")
        self.stats.add("generated_tokens", sum(isinstance(token, int) for token in tokens))
        if not keep:
            batch.rows = []
            return
        self.runner.step(batch, keep, fed)

    def _advance(self, row: Row, token: int) -> bool:
        """Add ``token`` to ``row`` and stream its new text; True when the row has finished."""
        generation = row.generation
        generation.token_ids.append(token)
        if token in self.eos_ids:
            self._finish(row, "stop", row.text.close()[0])
            return True
        text, stopped = row.text.push(token)
        if stopped:
            self._finish(row, "stop", text)
            return True
        if (
            len(generation.token_ids) >= generation.params.max_tokens
            or row.position + 1 >= self.context_length
        ):
            rest, stopped = row.text.close()
            self._finish(row, "stop" if stopped else "length", text + rest)
            return True
        if text:
            self._emit(row, Event(generation.tag, text, len(generation.token_ids)))
        return False

    def _emit(self, row: Row, event: Event) -> None:
        self._emit_to(row.generation, event)

    def _emit_to(self, generation: Generation, event: Event) -> None:
        try:
            generation.on_event(event)
        except Exception:  # the listener is gone (e.g. its event loop closed): drop the row
            logger.debug("listener of generation %s failed; cancelling it", generation.id, exc_info=True)
            generation.cancel()

    def _finish(self, row: Row, reason: str, text: str = "", error: str | None = None) -> None:
        self._finish_generation(row.generation, reason, text, error)

    def _finish_generation(
        self, generation: Generation, reason: str, text: str = "", error: str | None = None
    ) -> None:
        if generation.finished.is_set():
            return
        generation.finished.set()
        self.stats.add("cancelled" if reason == "cancelled" else "completed")
        self._emit_to(generation, Event(generation.tag, text, len(generation.token_ids), reason, error))

    def _fail(self, rows: list[Row], error: Exception) -> None:
        for row in rows:
            self._finish(row, "error", error=_describe(error))


def _describe(error: Exception) -> str:
    """An error as a row's ``Event.error``: sampling errors say it all, others name their type."""
    return str(error) if isinstance(error, SamplingError) else f"{type(error).__name__}: {error}"
