"""The serving engine: one base model, several adapters on it, one worker thread that batches requests.

No web framework here: the HTTP layer (``app.py``) and the benchmark talk to :class:`Engine` only.

Design. Every model call happens on the worker thread (PEFT's per-row adapter routing is model-wide
state, so two threads must never run the model at once). Requests wait in a bounded queue; the
worker collects them for a few milliseconds, left-pads them into one batch and runs a token-by-token
decode loop with a KV cache, passing ``adapter_names`` (one per row, ``"__base__"`` for the base) so
requests for different adapters share every forward pass. Requests that arrive while a batch is
decoding are prefilled as their own small batch and then merged into the running one (their KV cache
left-padded to the same length), so nobody waits for a long generation to finish. Each row samples
with its own ``torch.Generator``, streams its text as it goes, and stops on its own (EOS, a stop
string, ``max_tokens``, or cancellation, which frees its slot at the next step).

Left padding is exact: padded positions are masked out and position ids count real tokens only, so
a greedy answer in a batch equals the same request run alone (tests check this).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import inspect
import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ina.serve.settings import BASE_ADAPTER

logger = logging.getLogger("ina.serve")


class EngineError(Exception):
    """Base of the engine's errors; ``param`` names the request field at fault (or None)."""

    param: str | None = None
    code: str | None = None


class UnknownModelError(EngineError, KeyError):
    """The requested model id is neither the base nor a loaded adapter."""

    param, code = "model", "model_not_found"

    def __init__(self, model: str, available: Sequence[str]) -> None:
        super().__init__(model)
        self.model, self.available = model, list(available)


class PromptError(EngineError, ValueError):
    """The prompt cannot be run (empty, or too long for the model's context)."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code

    def __str__(self) -> str:
        return str(self.args[0])


class OverloadedError(EngineError, RuntimeError):
    """The request queue is full; the client should retry later."""

    code = "overloaded"


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded. ``temperature == 0`` is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclasses.dataclass
class Event:
    """What a generation reports: a piece of new text, and on the last event a ``finish_reason``.

    ``finish_reason`` is "stop" (EOS or a stop string), "length" (``max_tokens`` or the context),
    "cancelled" or "error" (then ``error`` says why).
    """

    tag: Any
    text: str
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None


@dataclasses.dataclass
class Result:
    """A finished generation, collected by :meth:`Engine.generate`."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    error: str | None = None


class Generation:
    """Handle on one submitted generation; :meth:`cancel` frees its batch slot at the next step."""

    _ids = itertools.count()

    def __init__(
        self,
        model_id: str,
        adapter: str,
        prompt_ids: list[int],
        params: SamplingParams,
        on_event: Callable[[Event], None],
        tag: Any,
    ) -> None:
        self.id = next(self._ids)
        self.model_id, self.adapter, self.prompt_ids, self.params = model_id, adapter, prompt_ids, params
        self.on_event, self.tag = on_event, tag
        self.token_ids: list[int] = []
        self.submitted_at = time.perf_counter()
        self._cancelled = threading.Event()
        self.finished = threading.Event()

    def cancel(self) -> None:
        """Ask the worker to drop this row (no effect once finished)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class _Row:
    """Decoding state of one generation inside a batch."""

    def __init__(self, generation: Generation, seed: int) -> None:
        self.generation = generation
        self.position = len(generation.prompt_ids)  # position id of the next token to feed
        self.emitted = 0  # characters of decoded text already sent
        self.generator = torch.Generator().manual_seed(seed)


class _Batch:
    """Rows decoded together: their KV cache, 2-D attention mask and the logits of their next token."""

    def __init__(self, rows: list[_Row], cache: Any, mask: torch.Tensor, logits: torch.Tensor) -> None:
        self.rows, self.cache, self.mask, self.logits = (
            rows,
            cache,
            mask,
            logits,
        )  # mask (B, L), logits (B, V)


@dataclasses.dataclass
class _Job:
    """A function to run on the worker thread between decode steps (e.g. attention maps)."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class Engine:
    """Serve ``model`` (a base model, or a PeftModel with adapters) to many concurrent requests.

    Args:
        model: a causal LM; a ``PeftModel`` when adapters are served.
        tokenizer: its tokenizer (a chat template is used for chat requests when it has one).
        base_model_id: the model id that means the base model (adapter ``"__base__"``).
        prompt_templates: adapter name -> the prompt template it was trained with (``ina_prompt.json``).
        max_batch_size: rows decoded at once; more requests wait in the queue.
        batch_window_ms: how long an idle worker waits for more requests before starting a batch.
        max_queue: requests waiting beyond this are refused with :class:`OverloadedError`.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        base_model_id: str = "base",
        prompt_templates: dict[str, Any] | None = None,
        max_batch_size: int = 32,
        batch_window_ms: float = 5.0,
        max_queue: int = 256,
    ) -> None:
        from peft import PeftModel

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.base_model_id = base_model_id
        self.is_peft = isinstance(model, PeftModel)
        self.adapters: list[str] = list(model.peft_config) if self.is_peft else []
        self.prompt_templates = dict(prompt_templates or {})
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_ms / 1000.0
        self.device = next(model.parameters()).device
        base = model.get_base_model() if self.is_peft else model
        parameters = inspect.signature(base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._takes_positions = "position_ids" in parameters
        self._takes_logits_to_keep = "logits_to_keep" in parameters
        config = base.config
        self.context_length: int = int(
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        )
        eos = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self._queue: queue.Queue[Generation | None] = queue.Queue(maxsize=max_queue)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Fast tokenizers may refuse concurrent use ("Already borrowed"): every user of the tokenizer
        # (encode, decode, jobs given to run_exclusive) holds this lock.
        self.tokenizer_lock = threading.Lock()
        self._active_rows = 0
        self._stats = {"steps": 0, "prefills": 0, "max_rows_in_step": 0, "max_adapters_in_step": 0}
        self._stats.update(completed=0, cancelled=0, generated_tokens=0, merges=0)

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        base_model: str | Path,
        adapters: dict[str, str] | None = None,
        base_model_id: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        **kwargs: Any,
    ) -> Engine:
        """Load the base model and tokenizer from ``base_model`` and each adapter folder in ``adapters``.

        Adapters may be InA, the authors' LoRA+inhibition format or plain LoRA (via ``ina.load_adapter``).
        ``dtype`` "auto" is float32 on CPU and the checkpoint's dtype on GPU.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import ina

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            torch_dtype: Any = torch.float32 if device == "cpu" else "auto"
        else:
            torch_dtype = getattr(torch, dtype)
        model: nn.Module = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(base_model))
        from ina.foundation.prompts import PromptTemplate

        templates = {}
        for name, path in (adapters or {}).items():
            model = ina.load_adapter(model, path, adapter_name=name)
            template = PromptTemplate.from_adapter(path)
            if template is not None:
                templates[name] = template
        model.to(device)
        model_id = base_model_id or Path(str(base_model).rstrip("/")).name or "base"
        return cls(model, tokenizer, base_model_id=model_id, prompt_templates=templates, **kwargs)

    # ----------------------------------------------------------------- models and prompts

    @property
    def model_ids(self) -> list[str]:
        """The base model id followed by every adapter name."""
        return [self.base_model_id, *self.adapters]

    def resolve(self, model_id: str) -> str:
        """The adapter name for request field ``model`` ("__base__" for the base model id)."""
        if model_id == self.base_model_id or model_id == BASE_ADAPTER:
            return BASE_ADAPTER
        if model_id in self.adapters:
            return model_id
        raise UnknownModelError(model_id, self.model_ids)

    def encode_text(self, text: str, param: str = "prompt") -> list[int]:
        """Token ids of a raw completion prompt."""
        with self.tokenizer_lock:
            ids = list(self.tokenizer(text)["input_ids"])
        if not ids:
            if self.tokenizer.bos_token_id is None:
                raise PromptError(f"`{param}` must not be empty; got {text!r}", param)
            ids = [self.tokenizer.bos_token_id]
        return ids

    def encode_chat(self, model_id: str, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, rendered with the tokenizer's chat template.

        An adapter trained on instruction prompts (its ``ina_prompt.json`` names e.g. "alpaca") gets
        the last user message as the instruction, in that template, as it saw in training.
        """
        adapter = self.resolve(model_id)
        template = self.prompt_templates.get(adapter)
        if template is not None and not template.chat:
            users = [m["content"] for m in messages if m["role"] == "user"]
            if not users:
                raise PromptError(
                    f"`messages` must contain a user message for {model_id!r} (an instruction-tuned adapter)",
                    "messages",
                )
            return self.encode_text(template.prompt(users[-1]), "messages")
        if getattr(self.tokenizer, "chat_template", None):
            with self.tokenizer_lock:
                text = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
                return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.encode_text(text, "messages")

    def encode_instruction(self, model_id: str, instruction: str, input: str = "") -> list[int]:
        """Token ids of an instruction prompt (the seed's ``/completion``).

        The template is the one the adapter was trained with (its ``ina_prompt.json``), else Alpaca's;
        a ``chat`` template sends instruction and input as one user turn through the chat template.
        """
        from ina.foundation.prompts import PromptTemplate

        adapter = self.resolve(model_id)
        template = self.prompt_templates.get(adapter) or PromptTemplate.load("alpaca")
        if template.chat:
            user = instruction if not input.strip() else f"{instruction}\n\n{input}"
            return self.encode_chat(model_id, [{"role": "user", "content": user}])
        return self.encode_text(template.prompt(instruction, input), "instruction")

    def check_length(self, prompt_ids: list[int], max_tokens: int, param: str) -> None:
        """Refuse a prompt that, with ``max_tokens`` new tokens, does not fit the model's context."""
        if len(prompt_ids) + max_tokens > self.context_length:
            raise PromptError(
                f"the prompt ({len(prompt_ids)} tokens) plus `max_tokens` ({max_tokens}) must fit the model's "
                f"context of {self.context_length} tokens; shorten `{param}` or lower `max_tokens`",
                param,
                "context_length_exceeded",
            )

    # ----------------------------------------------------------------- requests

    def submit(
        self,
        model_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        on_event: Callable[[Event], None],
        tag: Any = None,
    ) -> Generation:
        """Queue one generation; ``on_event`` is called from the worker thread with each :class:`Event`."""
        adapter = self.resolve(model_id)
        self.check_length(prompt_ids, params.max_tokens, "prompt")
        generation = Generation(model_id, adapter, list(prompt_ids), params, on_event, tag)
        self.start()
        try:
            self._queue.put_nowait(generation)
        except queue.Full:
            raise OverloadedError(
                f"the server is busy ({self._queue.maxsize} requests waiting); retry later"
            ) from None
        return generation

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

    def run_exclusive(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the worker thread between decode steps (nothing else touches the model meanwhile)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.start()
        self._jobs.put(_Job(fn, future))
        with contextlib.suppress(queue.Full):  # a full queue means a busy worker, which sees the job soon
            self._queue.put_nowait(None)  # wake an idle worker
        return future

    def stats(self) -> dict[str, int]:
        """Counters: active rows, queued requests, steps and the largest batch (rows, adapters) so far."""
        with self._lock:
            return {**self._stats, "active_rows": self._active_rows, "queued": self._queue.qsize()}

    # ----------------------------------------------------------------- worker

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._work, name="ina-serve-engine", daemon=True)
                self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the worker; rows still running finish as "cancelled"."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        batches: list[_Batch] = []
        with torch.inference_mode():
            while not self._stop.is_set():
                self._run_jobs()
                active = sum(len(b.rows) for b in batches)
                admitted = self._admit(block=not batches, free=self.max_batch_size - active)
                if admitted:
                    try:
                        batch = self._prefill(admitted)
                    except Exception as error:  # a model failure must not kill the server
                        logger.exception("prefill failed")
                        self._fail(admitted, error)
                    else:
                        if batches and self._can_merge(batches[0], batch):
                            batches[0] = self._merge(batches[0], batch)
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
                with self._lock:
                    self._active_rows = sum(len(b.rows) for b in batches)
            for batch in batches:
                for row in batch.rows:
                    self._finish(row, "cancelled")

    def _run_jobs(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job.future.set_running_or_notify_cancel():
                try:
                    job.future.set_result(job.fn())
                except Exception as error:
                    job.future.set_exception(error)

    def _admit(self, block: bool, free: int) -> list[_Row]:
        """Take up to ``free`` queued requests; when idle, wait for one, then ``batch_window`` for more."""
        taken: list[Generation] = []
        if free <= 0:
            return []
        if block:
            try:
                first = self._queue.get(timeout=0.5)
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
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is not None:
                    taken.append(item)
        while len(taken) < free:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                taken.append(item)
        rows = []
        for generation in taken:
            if generation.cancelled:
                self._finish(_Row(generation, 0), "cancelled")
                continue
            seed = generation.params.seed
            rows.append(_Row(generation, seed if seed is not None else random.getrandbits(63)))
        return rows

    def _forward(
        self, rows: list[_Row], input_ids: torch.Tensor, mask: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """One forward pass of ``rows`` (each with its own adapter); the logits of each row's last position."""
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True, self._cache_kwarg: cache}
        if self._takes_positions:
            width = input_ids.shape[1]
            last = torch.tensor([row.position for row in rows], device=self.device)[:, None]  # (B, 1)
            kwargs["position_ids"] = (last - width + torch.arange(1, width + 1, device=self.device)).clamp(
                min=0
            )
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        if self.is_peft:
            kwargs["adapter_names"] = [row.generation.adapter for row in rows]
        output = self.model(input_ids=input_ids, **kwargs)
        with self._lock:
            self._stats["max_rows_in_step"] = max(self._stats["max_rows_in_step"], len(rows))
            adapters = len({row.generation.adapter for row in rows})
            self._stats["max_adapters_in_step"] = max(self._stats["max_adapters_in_step"], adapters)
        return output.logits[:, -1, :].float()  # (B, V)

    def _prefill(self, rows: list[_Row]) -> _Batch:
        from transformers import DynamicCache

        prompts = [row.generation.prompt_ids for row in rows]
        width = max(map(len, prompts))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, L), left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        for row in rows:
            row.position = len(row.generation.prompt_ids) - 1  # position of the last prompt token
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        logits = self._forward(rows, input_ids, mask, cache)
        for row in rows:
            row.position += 1
        with self._lock:
            self._stats["prefills"] += 1
        return _Batch(rows, cache, mask, logits)

    @staticmethod
    def _cache_tensors(cache: Any) -> list[Any] | None:
        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(layer, "keys", None) is None or layer.is_sliding for layer in layers):
            return None
        return layers

    def _can_merge(self, a: _Batch, b: _Batch) -> bool:
        la, lb = self._cache_tensors(a.cache), self._cache_tensors(b.cache)
        return la is not None and lb is not None and len(la) == len(lb)

    def _merge(self, a: _Batch, b: _Batch) -> _Batch:
        """One batch from two: the shorter one's KV cache and mask are left-padded (masked zeros)."""
        width = max(a.mask.shape[1], b.mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for layer_a, layer_b in zip(a.cache.layers, b.cache.layers, strict=True):
            # keys / values: (B, heads, L, head_dim)
            layer_a.keys = torch.cat([pad(layer_a.keys, 2), pad(layer_b.keys, 2)], dim=0)
            layer_a.values = torch.cat([pad(layer_a.values, 2), pad(layer_b.values, 2)], dim=0)
        mask = torch.cat([pad(a.mask, 1), pad(b.mask, 1)], dim=0)  # (B, L)
        with self._lock:
            self._stats["merges"] += 1
        return _Batch(a.rows + b.rows, a.cache, mask, torch.cat([a.logits, b.logits], dim=0))

    def _choose(self, batch: _Batch) -> list[int]:
        """The next token of every row: greedy for temperature 0, else top-p sampling with the row's seed."""
        greedy = batch.logits.argmax(dim=-1).tolist()  # (B,)
        tokens = []
        for i, row in enumerate(batch.rows):
            params = row.generation.params
            if params.temperature <= 1e-5:
                tokens.append(greedy[i])
                continue
            probs = torch.softmax(batch.logits[i].cpu() / params.temperature, dim=-1)  # (V,)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = (sorted_probs.cumsum(0) - sorted_probs) < params.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return tokens

    def _step(self, batch: _Batch) -> None:
        """Pick each row's next token, stream its text, drop finished rows, run the next forward pass."""
        tokens = self._choose(batch)
        keep = []
        for i, (row, token) in enumerate(zip(batch.rows, tokens, strict=True)):
            if row.generation.cancelled:
                self._finish(row, "cancelled")
                continue
            if not self._advance(row, token):
                keep.append(i)
        with self._lock:
            self._stats["steps"] += 1
            self._stats["generated_tokens"] += len(tokens)
        if len(keep) < len(batch.rows):
            if not keep:
                batch.rows = []
                return
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch.mask = batch.mask[index]
            batch.rows = [batch.rows[i] for i in keep]
            tokens = [tokens[i] for i in keep]
        input_ids = torch.tensor(tokens, device=self.device)[:, None]  # (B, 1)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(keep), 1))], dim=1)  # (B, L + 1)
        batch.logits = self._forward(batch.rows, input_ids, batch.mask, batch.cache)
        for row in batch.rows:
            row.position += 1

    def _advance(self, row: _Row, token: int) -> bool:
        """Add ``token`` to ``row`` and stream its new text; True when the row has finished."""
        generation = row.generation
        params = generation.params
        if token in self.eos_ids:
            generation.token_ids.append(token)
            self._finish(row, "stop", self._decode(generation.token_ids[:-1])[row.emitted :])
            return True
        generation.token_ids.append(token)
        text = self._decode(generation.token_ids)
        if params.stop:
            hits = [i for i in (text.find(stop) for stop in params.stop) if i >= 0]
            if hits:
                self._finish(row, "stop", text[row.emitted : min(hits)])
                return True
        if len(generation.token_ids) >= params.max_tokens or row.position + 1 >= self.context_length:
            self._finish(row, "length", text[row.emitted :])
            return True
        safe = len(text.rstrip("\ufffd"))  # hold back an incomplete UTF-8 character
        held = 0
        for stop in params.stop:  # hold back what may be the start of a stop string
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if text[safe - k : safe] == stop[:k]:
                    held = max(held, k)
                    break
        safe -= held
        if safe > row.emitted:
            self._emit(row, Event(generation.tag, text[row.emitted : safe], len(generation.token_ids)))
            row.emitted = safe
        return False

    def _decode(self, token_ids: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _emit(self, row: _Row, event: Event) -> None:
        try:
            row.generation.on_event(event)
        except Exception:  # the listener is gone (e.g. its event loop closed): drop the row
            logger.debug("listener of generation %s failed; cancelling it", row.generation.id, exc_info=True)
            row.generation.cancel()

    def _finish(self, row: _Row, reason: str, text: str = "", error: str | None = None) -> None:
        generation = row.generation
        if generation.finished.is_set():
            return
        generation.finished.set()
        with self._lock:
            self._stats["cancelled" if reason == "cancelled" else "completed"] += 1
        self._emit(row, Event(generation.tag, text, len(generation.token_ids), reason, error))

    def _fail(self, rows: list[_Row], error: Exception) -> None:
        for row in rows:
            self._finish(row, "error", error=f"{type(error).__name__}: {error}")
