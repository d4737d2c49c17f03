"""`Engine`: one base model, several adapters on it, one worker thread that batches requests.

The public methods are all a caller (the HTTP API, a benchmark, a script) needs: model ids and
prompt encoding (:class:`~ina.serve.engine.prompts.PromptEncoder`), :meth:`Engine.submit` /
:meth:`Engine.generate`, :meth:`Engine.attention`, :meth:`Engine.run_exclusive` and :meth:`Engine.stats`.
The decode loop lives in :mod:`~ina.serve.engine.scheduler`, the forward passes in
:mod:`~ina.serve.engine.batch`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any

from torch import nn

from ina.foundation.adapters import BASE_ADAPTER
from ina.foundation.prompts import PromptTemplate
from ina.serve.engine import memory
from ina.serve.engine.batch import ModelRunner
from ina.serve.engine.loading import load
from ina.serve.engine.prompts import PromptEncoder
from ina.serve.engine.sampling import SamplingError, check_params
from ina.serve.engine.scheduler import Job, Scheduler
from ina.serve.engine.types import (
    Event,
    Generation,
    PromptError,
    Result,
    SamplingParams,
    Stats,
    UnsupportedError,
)
from ina.serve.engine.waiting import Waiting

logger = logging.getLogger("ina.serve")
PREFILL_CHUNK_TOKENS = 256
MAX_ATTENTION_QUEUE = 8


class Engine:
    """Serve ``model`` (a base model, or a PeftModel with adapters) to many concurrent requests.

    Args:
        model: a causal LM; a ``PeftModel`` when adapters are served.
        tokenizer: its tokenizer (a chat template is used for chat requests when it has one).
        base_model_id: the model id that means the base model (adapter ``"__base__"``).
        prompt_templates: adapter name -> the prompt template it was trained with (``ina_prompt.json``).
        max_batch_size: rows decoded at once; more requests wait in the queue.
        batch_window_ms: how long an idle worker waits for more requests before starting a batch.
        max_queue: rows waiting beyond this are refused with :class:`OverloadedError`.
        token_budget: tokens (each row: its prompt plus ``max_tokens``) that accepted rows may hold at once;
            None: sized from the memory free at start-up (:mod:`~ina.serve.engine.memory`).
        max_rows_per_request: rows (``n`` × prompts) one request may ask for; None: ``max_batch_size // 2``.
            One request never holds more than ``max_batch_size // 2`` batch slots at once.
        prefill_chunk_tokens: prompt tokens run per forward pass between two decode steps; None:
            ``PREFILL_CHUNK_TOKENS`` (256).
        max_attention_queue: attention maps allowed to wait; more are refused with :class:`OverloadedError`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        base_model_id: str = "base",
        prompt_templates: dict[str, PromptTemplate] | None = None,
        max_batch_size: int = 32,
        batch_window_ms: float = 5.0,
        max_queue: int = 256,
        token_budget: int | None = None,
        max_rows_per_request: int | None = None,
        prefill_chunk_tokens: int | None = None,
        max_attention_queue: int = MAX_ATTENTION_QUEUE,
    ) -> None:
        from peft import PeftModel

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.is_peft = isinstance(model, PeftModel)
        base = model.get_base_model() if self.is_peft else model
        config = base.config
        context_length = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        )
        eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (tokenizer.eos_token_id or 0)
        # Fast tokenizers may refuse concurrent use ("Already borrowed"): every user of the tokenizer
        # (encode, decode, jobs given to run_exclusive) holds this lock.
        self.tokenizer_lock = threading.Lock()
        adapters = list(model.peft_config) if self.is_peft else []
        self.prompts = PromptEncoder(
            tokenizer,
            self.tokenizer_lock,
            base_model_id,
            adapters,
            dict(prompt_templates or {}),
            context_length,
        )
        self._stats = Stats()
        self.runner = ModelRunner(self.model, self.is_peft, self.pad_id, self._stats)
        embeddings = base.get_output_embeddings()
        self.vocab_size = int(
            embeddings.weight.shape[0] if embeddings is not None else getattr(config, "vocab_size", 0)
        )
        share = max(1, max_batch_size // 2)
        if token_budget is None:
            dtype = next(self.model.parameters()).dtype
            token_budget = memory.token_budget(config, dtype, self.runner.device)
            logger.info(
                "token budget: %d tokens (half the free memory at %d bytes per token; set it with "
                "--token_budget)",
                token_budget,
                memory.kv_bytes_per_token(config, dtype) * memory.OVERHEAD,
            )
        self.waiting = Waiting(max_queue, token_budget, max_rows_per_request or share)
        self.max_attention_queue = max_attention_queue
        self.scheduler = Scheduler(
            self.runner,
            self.prompts.decode,
            self.eos_ids,
            context_length,
            max_batch_size,
            batch_window_ms / 1000.0,
            self.waiting,
            self._stats,
            PREFILL_CHUNK_TOKENS if prefill_chunk_tokens is None else prefill_chunk_tokens,
            share,
        )

    @classmethod
    def load(
        cls,
        base_model: str | PathLike[str],
        adapters: Mapping[str, str | PathLike[str]] | None = None,
        base_model_id: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        **kwargs: Any,
    ) -> Engine:
        """Load the base model and tokenizer from ``base_model`` and each adapter folder in ``adapters``.

        See :func:`ina.serve.engine.loading.load`; ``kwargs`` go to the constructor.
        """
        loaded = load(base_model, adapters, base_model_id, dtype, device)
        return cls(
            loaded.model,
            loaded.tokenizer,
            base_model_id=loaded.base_model_id,
            prompt_templates=loaded.prompt_templates,
            **kwargs,
        )

    # ----------------------------------------------------------------- models and prompts

    @property
    def base_model_id(self) -> str:
        return self.prompts.base_model_id

    @property
    def adapters(self) -> list[str]:
        """The adapter names, each served as a model id."""
        return self.prompts.adapters

    @property
    def prompt_templates(self) -> dict[str, PromptTemplate]:
        return self.prompts.templates

    @property
    def context_length(self) -> int:
        return self.prompts.context_length

    @property
    def device(self) -> Any:
        return self.runner.device

    @property
    def model_ids(self) -> list[str]:
        """The base model id followed by every adapter name."""
        return self.prompts.model_ids

    def resolve(self, model_id: str) -> str:
        """The adapter name for request field ``model`` ("__base__" for the base model id)."""
        return self.prompts.resolve(model_id)

    def encode_text(self, text: str, param: str = "prompt") -> list[int]:
        """Token ids of a raw completion prompt."""
        return self.prompts.encode_text(text, param)

    def encode_chat(self, model_id: str, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, in the adapter's prompt template or the tokenizer's chat template."""
        return self.prompts.encode_chat(model_id, messages)

    def encode_instruction(self, model_id: str, instruction: str, input: str = "") -> list[int]:
        """Token ids of an instruction prompt (the seed's ``/completion``), in the adapter's template."""
        return self.prompts.encode_instruction(model_id, instruction, input)

    def check_length(self, prompt_ids: list[int], max_tokens: int, param: str) -> None:
        """Refuse a prompt that, with ``max_tokens`` new tokens, does not fit the model's context."""
        self.prompts.check_length(prompt_ids, max_tokens, param)

    # ----------------------------------------------------------------- requests

    @property
    def limits(self) -> dict[str, int]:
        """What this engine accepts: token budget, rows per request, batch, queues, prefill chunk."""
        return {
            "token_budget": self.waiting.token_budget,
            "max_rows_per_request": self.waiting.max_rows_per_request,
            "max_batch_size": self.scheduler.max_batch_size,
            "max_queue": self.waiting.max_queue,
            "max_attention_queue": self.max_attention_queue,
            "prefill_chunk_tokens": self.scheduler.prefill_chunk_tokens,
        }

    def check_sampling(self, params: SamplingParams) -> None:
        """Raise :class:`PromptError` (``param``: the field) for parameters no row can be decoded with.

        :meth:`submit` does not call it: a row with such parameters finishes with an error of its own.
        """
        try:
            check_params(params, self.vocab_size)
        except SamplingError as error:
            raise PromptError(str(error), error.param or "sampling", "invalid_value") from None

    def submit(
        self,
        model_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        on_event: Callable[[Event], None],
        tag: Any = None,
    ) -> Generation:
        """Queue one generation; ``on_event`` is called from the worker thread with each :class:`Event`."""
        return self.submit_many(model_id, [(prompt_ids, params)], on_event, [tag])[0]

    def submit_many(
        self,
        model_id: str,
        jobs: list[tuple[list[int], SamplingParams]],
        on_event: Callable[[Event], None],
        tags: list[Any] | None = None,
    ) -> list[Generation]:
        """Queue the generations of one request (its ``n`` choices or prompts), all or none.

        ``tags`` (default ``0 .. len(jobs) - 1``) tell their events apart. Raises
        :class:`~ina.serve.engine.types.TooManyRowsError` or
        :class:`~ina.serve.engine.types.TooLargeForBudgetError` for a request this engine never accepts,
        :class:`~ina.serve.engine.types.OverloadedError` (queue full) or
        :class:`~ina.serve.engine.types.OverBudgetError` (token budget held by others) for one to retry.
        """
        adapter = self.resolve(model_id)
        for prompt_ids, params in jobs:
            self.check_length(prompt_ids, params.max_tokens, "prompt")
        tags = list(range(len(jobs))) if tags is None else tags
        generations: list[Generation] = []
        for (prompt_ids, params), tag in zip(jobs, tags, strict=True):
            request = generations[0].id if generations else None
            generations.append(
                Generation(model_id, adapter, list(prompt_ids), params, on_event, tag, request)
            )
        if not generations:
            return []
        self.start()
        self.waiting.put(generations)
        return generations

    def generate(
        self, model_id: str, prompt_ids: list[int], params: SamplingParams, timeout: float | None = None
    ) -> Result:
        """Submit and wait: the blocking form of :meth:`submit` (tests, benchmarks, scripts)."""
        parts: list[str] = []
        last: list[Event] = []
        done = threading.Event()

        def on_event(event: Event) -> None:
            parts.append(event.text)
            if event.finish_reason is not None:
                last.append(event)
                done.set()

        generation = self.submit(model_id, prompt_ids, params, on_event)
        if not done.wait(timeout):
            generation.cancel()
            raise TimeoutError(f"generation did not finish within {timeout} s")
        return Result(
            text="".join(parts),
            token_ids=list(generation.token_ids),
            prompt_tokens=len(prompt_ids),
            completion_tokens=last[0].completion_tokens,
            finish_reason=last[0].finish_reason or "stop",
            error=last[0].error,
        )

    def attention(
        self,
        model_id: str,
        text: str,
        text_pair: str | None = None,
        layers: list[int] | None = None,
        max_tokens: int | None = None,
    ) -> concurrent.futures.Future[dict[str, Any]]:
        """Head-averaged attention maps of ``model_id`` on ``text`` (see `ina.foundation.attention`).

        Runs on the worker thread between decode steps. The future raises :class:`PromptError` for a
        layer that does not exist, an unusable text or one longer than ``max_tokens`` tokens (the answer
        holds layers × tokens² numbers), :class:`UnsupportedError` when the model cannot return attention
        weights; an unknown ``model_id`` raises at once, and so does :class:`OverloadedError` when
        ``max_attention_queue`` maps wait. Cancel the future when the client leaves: a map not started yet
        is never computed.
        """
        from ina.foundation.attention import (
            AttentionUnavailableError,
            compute_attention,
            encode,
            looks_causal,
        )

        adapter = self.resolve(model_id)

        def job() -> dict[str, Any]:
            try:
                with self.tokenizer_lock:  # it tokenizes with its own truncation settings
                    if max_tokens is not None:
                        encoded, _ = encode(
                            self.model, self.tokenizer, text, text_pair, looks_causal(self.model)
                        )
                        length = int(encoded["input_ids"].shape[-1])
                        if length > max_tokens:
                            raise PromptError(
                                f"`text` (with `text_pair`) must be at most {max_tokens} tokens for attention maps "
                                f"on this server (--max_attention_tokens); got {length}: send a shorter text",
                                "text",
                                "attention_too_long",
                            )
                    return compute_attention(
                        self.model,
                        self.tokenizer,
                        text,
                        text_pair=text_pair,
                        layers=layers,
                        adapter_name=None if adapter == BASE_ADAPTER else adapter,
                    )
            except PromptError:
                raise
            except (ValueError, IndexError) as error:
                raise PromptError(str(error), "layers" if "layer" in str(error) else "text") from None
            except AttentionUnavailableError as error:
                raise UnsupportedError(str(error), "model", "attention_unavailable") from None

        return self.run_exclusive(job, limit=self.max_attention_queue)

    def run_exclusive(
        self, fn: Callable[[], Any], limit: int | None = None
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the worker thread between decode steps (nothing else touches the model meanwhile).

        One job runs per decode step. With ``limit``, :class:`OverloadedError` if ``limit`` jobs so added
        wait already. Cancelling the future before the job starts means it never runs.
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.start()
        self.scheduler.add_job(Job(fn, future), limit)
        return future

    def stats(self) -> dict[str, int]:
        """Counters: active, prefilling and queued rows, tokens reserved, attention maps waiting, steps,
        and the largest batch (rows, adapters) so far."""
        return self._stats.snapshot(
            active_rows=self.scheduler.active_rows,
            prefilling=self.scheduler.prefilling_rows,
            queued=len(self.waiting),
            reserved_tokens=self.waiting.reserved,
            attention_queued=self.scheduler.limited_jobs,
        )

    # ----------------------------------------------------------------- worker

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        self.scheduler.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the worker; rows still running finish as "cancelled"."""
        self.scheduler.shutdown(timeout)
