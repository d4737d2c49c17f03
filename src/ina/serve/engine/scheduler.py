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
from ina.serve.engine.sampling import next_tokens
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
        self.active_rows = 0
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
                self._run_jobs()
                active = sum(len(b.rows) for b in batches)
                admitted = self._admit(block=not batches, free=self.max_batch_size - active)
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
                for batch in list(batches):
                    try:
                        self._step(batch)
                    except Exception as error:
                        logger.exception("decode step failed")
                        self._fail(batch.rows, error)
                        batch.rows = []
                batches = [b for b in batches if b.rows]
                with self.stats.lock:
                    self.active_rows = sum(len(b.rows) for b in batches)
            for batch in batches:
                for row in batch.rows:
                    self._finish(row, "cancelled")

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
            seed = generation.params.seed
            row = Row(
                generation,
                seed if seed is not None else random.getrandbits(63),
                TextStream(self.decode, generation.params.stop),
            )
            if generation.cancelled:
                self._finish(row, "cancelled")
            else:
                rows.append(row)
        return rows

    def _step(self, batch: Batch) -> None:
        """Pick each row's next token, stream its text, drop finished rows, run the next forward pass."""
        rows = batch.rows
        tokens = next_tokens(batch.logits, [r.generation.params for r in rows], [r.generator for r in rows])
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if row.generation.cancelled:
                self._finish(row, "cancelled")
            elif not self._advance(row, token):
                keep.append(i)
        self.stats.add("steps")
        self.stats.add("generated_tokens", len(tokens))
        if not keep:
            batch.rows = []
            return
        self.runner.step(batch, keep, tokens)

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
        try:
            row.generation.on_event(event)
        except Exception:  # the listener is gone (e.g. its event loop closed): drop the row
            logger.debug("listener of generation %s failed; cancelling it", row.generation.id, exc_info=True)
            row.generation.cancel()

    def _finish(self, row: Row, reason: str, text: str = "", error: str | None = None) -> None:
        generation = row.generation
        if generation.finished.is_set():
            return
        generation.finished.set()
        self.stats.add("cancelled" if reason == "cancelled" else "completed")
        self._emit(row, Event(generation.tag, text, len(generation.token_ids), reason, error))

    def _fail(self, rows: list[Row], error: Exception) -> None:
        for row in rows:
            self._finish(row, "error", error=f"{type(error).__name__}: {error}")
