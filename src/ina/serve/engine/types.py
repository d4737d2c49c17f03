"""What the engine takes and gives: sampling parameters, events, results, generation handles, errors."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


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
    """The request cannot be run as given (an empty or too long prompt, a layer that does not exist)."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedError(EngineError, RuntimeError):
    """The model cannot do what was asked (e.g. return attention weights)."""

    def __init__(self, message: str, param: str | None, code: str) -> None:
        super().__init__(message)
        self.param, self.code = param, code


class OverloadedError(EngineError, RuntimeError):
    """The request queue is full; the client should retry later."""

    code = "overloaded"


class TooManyRowsError(PromptError):
    """One request asks for more rows (``n`` × prompts) than ``max_rows_per_request``."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(
            f"a request may ask for at most {limit} completions (--max_rows_per_request); `n` times the number "
            f"of prompts is {rows}: send fewer prompts or a smaller `n` per request",
            "n",
            "too_many_choices",
        )
        self.rows, self.limit = rows, limit


class TooLargeForBudgetError(PromptError):
    """One request needs more tokens than the whole token budget: it could never be accepted."""

    def __init__(self, tokens: int, budget: int) -> None:
        super().__init__(
            f"this request needs {tokens} tokens of memory (each completion: its prompt plus `max_tokens`), more "
            f"than this server's token budget of {budget} (--token_budget); lower `max_tokens` or `n`, or send "
            "fewer or shorter prompts",
            "max_tokens",
            "exceeds_token_budget",
        )
        self.tokens, self.budget = tokens, budget


class OverBudgetError(OverloadedError):
    """The request fits the token budget, but not what other requests hold of it now: retry later."""

    code = "token_budget_full"

    def __init__(self, tokens: int, budget: int, reserved: int) -> None:
        super().__init__(
            f"the server is busy: this request needs {tokens} tokens of memory and {reserved} of the token "
            f"budget of {budget} are held by requests in progress; retry later"
        )
        self.tokens, self.budget, self.reserved = tokens, budget, reserved


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded. ``temperature == 0`` is greedy.

    OpenAI's penalties and biases act on the logits before the temperature (greedy rows too): token ``j``
    gets ``logit_bias[j]`` added and ``count_j * frequency_penalty + (count_j > 0) * presence_penalty``
    subtracted, ``count_j`` being how often the row has generated it so far (the prompt is not counted).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = None


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
        request: int | None = None,
    ) -> None:
        self.id = next(self._ids)
        self.model_id, self.adapter, self.prompt_ids, self.params = model_id, adapter, prompt_ids, params
        self.on_event, self.tag = on_event, tag
        self.request = (
            self.id if request is None else request
        )  # the rows of one request share it (fair turns)
        self.cost = len(prompt_ids) + params.max_tokens  # tokens of the budget it holds until it finishes
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


class Stats:
    """The engine's counters, shared by the worker thread and whoever asks (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("steps", "prefills", "max_rows_in_step", "max_adapters_in_step", "completed", "cancelled"), 0
        )
        self._counts.update(generated_tokens=0, merges=0, prefill_chunks=0)

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self._counts[name] += amount

    def peak(self, name: str, value: int) -> None:
        """Keep the largest ``value`` seen under ``name``."""
        with self.lock:
            self._counts[name] = max(self._counts[name], value)

    def snapshot(self, **extra: int) -> dict[str, int]:
        with self.lock:
            return {**self._counts, **extra}
