"""The serving engine: one base model, several adapters on it, one worker thread that batches requests.

No web framework here: the HTTP API (`ina.serve.api`) and benchmarks talk to :class:`Engine` only.

    types.py       what goes in and out: SamplingParams, Event, Result, Generation, the errors
    loading.py     base model, tokenizer, adapters and their prompt templates
    prompts.py     model ids and prompt encoding (chat, instruction and raw prompts)
    engine.py      Engine: the public methods
    waiting.py     waiting rows, taken round-robin across requests, and the token budget
    memory.py      the default token budget, from the KV cache's bytes per token and free memory
    scheduler.py   the worker thread: admitting requests, chunked prefill, batching, streaming, finishing rows
    batch.py       forward passes: left-padded prefill in chunks, decode steps, merging KV caches
    sampling.py    logit_bias, penalties, greedy and top-p sampling, one seeded generator per row
    detokenize.py  incremental detokenisation and stop strings (per-token work independent of length)
"""

from ina.serve.engine.engine import Engine
from ina.serve.engine.types import (
    EngineError,
    Event,
    Generation,
    OverBudgetError,
    OverloadedError,
    PromptError,
    Result,
    SamplingParams,
    TooLargeForBudgetError,
    TooManyRowsError,
    UnknownModelError,
    UnsupportedError,
)

__all__ = [
    "Engine",
    "EngineError",
    "Event",
    "Generation",
    "OverBudgetError",
    "OverloadedError",
    "PromptError",
    "Result",
    "SamplingParams",
    "TooLargeForBudgetError",
    "TooManyRowsError",
    "UnknownModelError",
    "UnsupportedError",
]
