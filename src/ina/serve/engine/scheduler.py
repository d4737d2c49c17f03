"""The worker thread: admits waiting rows, runs their prompts in chunks, merges batches, decodes, streams.

Every model call happens on this one thread (PEFT's per-row adapter routing is model-wide state, so
two threads must never run the model at once). Requests wait in :class:`~ina.serve.engine.waiting.Waiting`
(bounded in rows and in tokens, taken round-robin across requests); an idle worker collects them for
``batch_window_s`` and prefills them as one batch. A turn of the loop runs at most one job (e.g. an
attention map), admits rows into free slots, runs one chunk of at most ``prefill_chunk_tokens`` prompt
tokens, and decodes one token of every running batch: a long prompt is run a chunk per turn, so the
streams already running keep flowing. Finished prompts merge into a running batch of similar width.
Each row stops on its own (EOS, a stop string, ``max_tokens``, the context, or cancellation, which frees
its slot at the next step).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import queue
import random
import threading
from collections.abc import Callable
from typing import Any

import torch

from ina.serve.engine.batch import Batch, ModelRunner, Prefill, Row
from ina.serve.engine.detokenize import TextStream
from ina.serve.engine.sampling import SamplingError, check_seed, next_tokens
from ina.serve.engine.types import Event, Generation, OverloadedError, Stats
from ina.serve.engine.waiting import Waiting

logger = logging.getLogger("ina.serve")


@dataclasses.dataclass
class Job:
    """A function to run on the worker thread between decode steps (e.g. attention maps)."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Scheduler:
    """Owns the waiting rows and the worker thread that runs ``runner`` on batches of rows.

    Args:
        share: the most batch slots the rows of one request hold at once.
        prefill_chunk_tokens: prompt tokens (rows × columns) run per forward pass between decode steps.
    """

    def __init__(
        self,
        runner: ModelRunner,
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        context_length: int,
        max_batch_size: int,
        batch_window_s: float,
        waiting: Waiting,
        stats: Stats,
        prefill_chunk_tokens: int,
        share: int,
    ) -> None:
        self.runner, self.decode, self.eos_ids = runner, decode, eos_ids
        self.context_length, self.max_batch_size, self.batch_window_s = (
            context_length,
            max_batch_size,
            batch_window_s,
        )
        self.waiting, self.stats = waiting, stats
        self.prefill_chunk_tokens, self.share = prefill_chunk_tokens, share
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._limited: list[concurrent.futures.Future[Any]] = []  # futures of jobs added with a limit
        self._limited_lock = threading.Lock()
        self._batches: list[Batch] = []  # the worker's batches, as of its last turn (read by `active_rows`)
        self._prefills: collections.deque[Prefill] = collections.deque()  # prompts being run, in turns
        self._admitted: list[Row] = []  # rows taken from the queue but not yet in a prefill
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
        """Stop the worker; rows still running or waiting finish as "cancelled"."""
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def _in_flight(self) -> list[Row]:
        """Rows admitted and not dropped: prefilling or decoding (a snapshot; any thread may call it)."""
        rows = [row for batch in list(self._batches) for row in list(batch.rows)]
        return (
            rows
            + [row for prefill in list(self._prefills) for row in list(prefill.rows)]
            + list(self._admitted)
        )

    @property
    def active_rows(self) -> int:
        """Rows being prefilled or decoded and not finished (a cancelled or failed row stops counting at once)."""
        return len({id(row) for row in self._in_flight() if not row.generation.finished.is_set()})

    @property
    def prefilling_rows(self) -> int:
        """Rows whose prompt is still being run."""
        return sum(len(prefill.rows) for prefill in list(self._prefills))

    @property
    def limited_jobs(self) -> int:
        """Jobs added with a limit that have not started (and were not cancelled)."""
        return sum(not (f.running() or f.done()) for f in list(self._limited))

    def add_job(self, job: Job, limit: int | None = None) -> None:
        """Queue ``job``; with ``limit``, raise :class:`OverloadedError` if ``limit`` such jobs already wait.

        A job whose future is cancelled before it starts never runs, and no longer counts against ``limit``.
        """
        if limit is not None:
            with self._limited_lock:  # two callers must not both take the last place
                self._limited = [f for f in self._limited if not f.done()]
                if self.limited_jobs >= limit:
                    raise OverloadedError(f"the server is busy ({limit} attention maps waiting); retry later")
                self._limited.append(job.future)
        self.jobs.put(job)
        self.wake()

    def wake(self) -> None:
        """Wake an idle worker."""
        self.waiting.wake()

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
                    for prefill in self._prefills:
                        self._fail(prefill.rows, error)
                    self._fail(self._admitted, error)
                    batches, self._admitted = [], []
                    self._prefills.clear()
                self._batches = batches
            rows = [row for batch in batches for row in batch.rows]
            for row in rows + [row for prefill in self._prefills for row in prefill.rows]:
                self._finish(row, "cancelled")
            for generation in self.waiting.drain():
                self._finish_generation(generation, "cancelled")

    def _cycle(self, batches: list[Batch]) -> list[Batch]:
        """One turn: a job, admitting rows, one chunk of prompt, one decode step of every batch."""
        idle = not batches and not self._prefills
        self._run_jobs(every=idle)
        self._drop_cancelled()
        running = collections.Counter(row.generation.request for row in self._in_flight())
        self._admitted = self._admit(idle, self.max_batch_size - sum(running.values()), running)
        for group in self._groups(self._admitted):
            try:
                self._prefills.append(self.runner.start_prefill(group))
            except Exception as error:  # a model failure must not kill the server
                logger.exception("prefill failed")
                self._fail(group, error)
        self._admitted = []  # from here on, every row in flight is in `batches` or `_prefills`
        if self._prefills:
            self._prefill_chunk(batches)
        for batch in list(batches):
            try:
                self._step(batch)
            except Exception as error:
                logger.exception("decode step failed")
                self._fail(batch.rows, error)
                batch.rows = []
        return [b for b in batches if b.rows]

    def _groups(self, rows: list[Row]) -> list[list[Row]]:
        """Rows to prefill together: the short prompts as one batch, the long ones by length (no padding)."""
        short = [row for row in rows if len(row.generation.prompt_ids) <= self.prefill_chunk_tokens]
        long: dict[int, list[Row]] = {}
        for row in rows:
            if len(row.generation.prompt_ids) > self.prefill_chunk_tokens:
                long.setdefault(len(row.generation.prompt_ids), []).append(row)
        return ([short] if short else []) + list(long.values())

    def _prefill_chunk(self, batches: list[Batch]) -> None:
        """Run one chunk of the next prefill in turn; a finished one joins (or becomes) a running batch."""
        prefill = self._prefills.popleft()
        try:
            batch = self.runner.prefill_step(prefill, self.prefill_chunk_tokens)
        except Exception as error:  # a model failure must not kill the server
            logger.exception("prefill failed")
            self._fail(prefill.rows, error)
            return
        if batch is None:
            self._prefills.append(prefill)  # the other prompts get the next turn
            return
        fits = [b for b in batches if self.runner.can_merge(b, batch, len(batches))]
        if fits:
            widest = max(batch.mask.shape[1], 1)
            best = min(fits, key=lambda b: abs(b.mask.shape[1] - widest))  # the closest width wastes least
            batches[batches.index(best)] = self.runner.merge(best, batch)
        else:
            batches.append(batch)

    def _drop_cancelled(self) -> None:
        """Finish the waiting and prefilling rows whose client cancelled them (their budget is freed now)."""
        for generation in self.waiting.drop_cancelled():
            self._finish_generation(generation, "cancelled")
        for prefill in list(self._prefills):
            keep = [i for i, row in enumerate(prefill.rows) if not row.generation.cancelled]
            if len(keep) == len(prefill.rows):
                continue
            for row in prefill.rows:
                if row.generation.cancelled:
                    self._finish(row, "cancelled")
            if keep:
                prefill.keep(keep)
            else:
                self._prefills.remove(prefill)

    def _run_jobs(self, every: bool) -> None:
        """Run the next job; with ``every`` (nothing is decoding), every job queued now."""
        for _ in range(self.jobs.qsize() if every else 1):
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.fn())
                except Exception as error:
                    job.future.set_exception(error)

    def _admit(self, idle: bool, free: int, running: collections.Counter[int]) -> list[Row]:
        """Take up to ``free`` waiting rows in turns; when idle, wait for one, then ``batch_window`` for more."""
        if free <= 0:
            return []
        if idle:
            if not len(self.waiting):
                if not self.jobs.empty():
                    return []
                self.waiting.wait(timeout=0.5)
            if len(self.waiting) and self.batch_window_s > 0:
                self.waiting.wait_for(free, self.batch_window_s)
        rows = []
        for generation in self.waiting.take(free, self.share, running):
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
        vocab_size = batch.logits.shape[-1]
        tokens = next_tokens(
            batch.logits,
            [r.generation.params for r in rows],
            [r.generator for r in rows],
            [r.adjust(vocab_size) for r in rows],
        )
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
        if row.adjustment is not None:
            row.adjustment.observe(token)
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
        # its tokens go back before its last event: its client may send the next request at once
        self.waiting.release(generation)
        generation.finished.set()
        self.stats.add("cancelled" if reason == "cancelled" else "completed")
        self._emit_to(generation, Event(generation.tag, text, len(generation.token_ids), reason, error))

    def _fail(self, rows: list[Row], error: Exception) -> None:
        for row in rows:
            self._finish(row, "error", error=_describe(error))


def _describe(error: Exception) -> str:
    """An error as a row's ``Event.error``: sampling errors say it all, others name their type."""
    return str(error) if isinstance(error, SamplingError) else f"{type(error).__name__}: {error}"
