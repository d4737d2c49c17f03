"""Request and response models of the HTTP API (the OpenAI shapes, plus the seed's ``/completion``).

Requests are validated strictly (a string is not a number); unknown fields are ignored, as OpenAI
clients send fields we do not use. Every response is one of the models below.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # the range torch.Generator.manual_seed accepts
SEED_RANGE: dict[str, Any] = {"minimum": SEED_MIN, "maximum": SEED_MAX}  # in the OpenAPI schema
MAX_LAYERS = 1024  # more layer numbers than any model has


def check_text(value: Any, field: str) -> Any:
    """``value`` (a string, or a list of strings) unchanged, if it is valid Unicode: JSON allows lone
    surrogates (``"\\ud800"``), which no tokenizer (and no UTF-8 encoder) accepts."""
    for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
        if isinstance(text, str) and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"`{field}` must be valid Unicode text; it holds a lone surrogate "
                    f"({text[error.start]!r}) at character {error.start}: send each character as UTF-8 "
                    "or as a complete surrogate pair"
                ) from None
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        return check_text(value, info.field_name or "text")


class TextPart(_Request):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The message content as one string."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, json_schema_extra=SEED_RANGE)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("`stop` must be a non-empty string or a list of at most 4 non-empty strings")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        return check_seed(value)

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # Accepted so that clients sending their defaults work; asking for them is refused (see `unsupported`).
    logprobs: bool | None = None
    tools: list[Any] | None = None

    def unsupported(self) -> str | None:
        """The first requested feature this server does not offer, if any."""
        if self.logprobs:
            return "logprobs"
        if self.tools:
            return "tools"
        return None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None

    def unsupported(self) -> str | None:
        """The first requested feature this server does not offer, if any."""
        if self.logprobs:
            return "logprobs"
        if self.best_of is not None and self.best_of != self.n:
            return "best_of"
        return None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("`prompt` must be a string or a non-empty list of strings")
        return value


class InstructionRequest(_Request):
    """The seed's ``POST /completion``: an Alpaca-style instruction and optional input."""

    instruction: str = Field(min_length=1)
    input: str = ""
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, json_schema_extra=SEED_RANGE)

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        return check_seed(value)


class AttentionRequest(_Request):
    """``POST /v1/attention``: head-averaged attention maps of one model on one text (or pair)."""

    model: str
    text: str = Field(min_length=1)
    text_pair: str | None = None
    layers: list[int] | None = Field(default=None, max_length=MAX_LAYERS)

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) < len(value):
            raise ValueError("`layers` must name each layer once")
        return value


def check_seed(value: int | None) -> int | None:
    """``value`` if a ``torch.Generator`` accepts it as a seed."""
    if value is not None and not SEED_MIN <= value <= SEED_MAX:
        raise ValueError(f"`seed` must be an integer in [{SEED_MIN}, {SEED_MAX}]; got {value}")
    return value


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
    """``GET /health``: the server is up; its models, its cap on ``max_tokens`` and its load."""

    status: Literal["ok"] = "ok"
    models: list[str]
    max_tokens_cap: int
    active: int
    queued: int


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
