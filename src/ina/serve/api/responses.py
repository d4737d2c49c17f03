"""Response models of the HTTP API (the OpenAI shapes, plus the seed's ``/completion``): every route answers
with one of them; requests are in :mod:`ina.serve.api.schemas`."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class Health(BaseModel):
    """``GET /health``: the server is up; its models, its cap on ``max_tokens``, its load and its limits
    (token budget, rows per request, batch, queues, prefill chunk: ``Engine.limits``)."""

    status: Literal["ok"] = "ok"
    models: list[str]
    max_tokens_cap: int
    active: int
    queued: int
    limits: dict[str, int]


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``: the base (no ``parent``) or an adapter on it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ina"
    root: str
    parent: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str


class ChatDelta(BaseModel):
    """What a stream chunk adds to a choice: the role first, then pieces of content, then nothing.

    Only the keys that are set appear (``{}`` on the chunk that carries the ``finish_reason``).
    """

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _set_keys_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class _Completion(BaseModel):
    """The fields every completion response and stream chunk carries (OpenAI's shape)."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: None = None


class ChatCompletion(_Completion):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatCompletionChunk(_Completion):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TextCompletion(_Completion):
    """A text completion, or (``usage`` left out until the last) one chunk of its stream."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage | None = None


class InstructionCompletion(BaseModel):
    """``POST /completion``: the seed's answer to one instruction."""

    id: str
    object: Literal["instruction.completion"] = "instruction.completion"
    created: int
    model: str
    instruction: str
    input: str
    response: str
    finish_reason: str
    usage: Usage


class Attention(BaseModel):
    """``POST /v1/attention``: per layer, a T×T matrix of head-averaged attention (row i: token i's)."""

    object: Literal["attention"] = "attention"
    model: str
    tokens: list[str]
    token_texts: list[str]
    layers: list[int]
    attention: list[list[list[float]]]
    causal: bool
    truncated: bool
    adapter: str | None
    num_layers: int
    num_heads: int
    context_length: int | None


def to_json(response: BaseModel) -> dict[str, Any]:
    """A response as JSON data; a stream chunk without usage leaves the ``usage`` key out, as OpenAI's do."""
    exclude = {"usage"} if getattr(response, "usage", True) is None else None
    return response.model_dump(mode="json", exclude=exclude)


def new_id(prefix: str) -> str:
    """An OpenAI-style object id, e.g. ``chatcmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
