"""Request models of the HTTP API (the OpenAI shapes, plus the seed's ``/completion``).

Requests are validated strictly (a string is not a number), and no field is ever accepted and ignored:
an unknown field is a 400 naming it, and an OpenAI field this server does not implement (``UNSUPPORTED``)
is accepted only at the value that asks for nothing (its OpenAI default), else a 400 naming it.
The response models are in :mod:`ina.serve.api.responses`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # the range torch.Generator.manual_seed accepts
SEED_RANGE: dict[str, Any] = {"minimum": SEED_MIN, "maximum": SEED_MAX}  # in the OpenAPI schema
MAX_LAYERS = 1024  # more layer numbers than any model has
MAX_LOGIT_BIAS = 1024  # token ids one request may bias (OpenAI: 300)


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


# OpenAI request fields this server does not implement: field -> (the values that ask for nothing besides
# None, why it is refused). A request that sets one to anything else gets a 400 naming it.
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "response_format": (({"type": "text"},), "it answers in plain text only"),
    "logprobs": ((False,), "it returns no log probabilities"),
    "top_logprobs": ((0,), "it returns no log probabilities"),
    "tools": (([],), "it calls no tools"),
    "tool_choice": (("none",), "it calls no tools"),
    "functions": (([],), "it calls no functions"),
    "function_call": (("none",), "it calls no functions"),
    "tool_calls": (([],), "it calls no tools"),
    "refusal": ((), "a message's `refusal` has no place in the prompt"),
    "audio": ((), "it handles text only"),
    "modalities": ((["text"],), "it handles text only"),
    "prediction": ((), "it uses no predicted outputs"),
    "reasoning_effort": ((), "the served models have no reasoning setting"),
    "verbosity": ((), "the served models have no verbosity setting"),
    "web_search_options": ((), "it does not search the web"),
    "store": ((False,), "it stores nothing"),
    "metadata": (({},), "it stores nothing to attach metadata to"),
    "service_tier": (("auto", "default"), "it has one service tier"),
    "suffix": (("",), "it inserts no text after the completion"),
    "best_of": ((), "it does not rank candidates; ask for `n` completions instead"),
    "name": ((), "the chat template has no place for a participant's name"),
}


def unsupported_field(field: str, value: Any) -> Any:
    """``value`` when it asks for nothing of ``field`` (see ``UNSUPPORTED``), else a 400 naming the field."""
    neutral, why = UNSUPPORTED[field]
    if value is None or any(value == v and type(value) is type(v) for v in neutral):
        return value
    allowed = " or ".join(["null", *(json.dumps(v) for v in neutral)])
    raise PydanticCustomError(
        "unsupported",
        "`{field}` is not supported by ina serve: {why}; leave it out or send {allowed}",
        {"field": field, "why": why, "allowed": allowed},
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        return check_text(value, info.field_name or "text")

    @field_validator("*")
    @classmethod
    def _supported(cls, value: Any, info: ValidationInfo) -> Any:
        return unsupported_field(info.field_name, value) if info.field_name in UNSUPPORTED else value


class TextPart(_Request):
    """One part of a message's content list; only text parts are supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    # accepted empty only, as clients send back an assistant message they were given (see UNSUPPORTED)
    name: Any = None
    tool_calls: Any = None
    function_call: Any = None
    refusal: Any = None
    audio: Any = None

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
    user: str | None = None  # who asks (OpenAI's abuse monitoring); it changes no answer
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    # token id (a decimal string: JSON keys are strings) -> bias added to its logit, in [-100, 100]
    logit_bias: dict[str, float] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    service_tier: Any = None
    store: Any = None
    metadata: Any = None

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

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not (token.isascii() and token.isdigit() and len(token) <= 9):
                raise ValueError(f'`logit_bias` keys must be token ids ("0", "42", ...); got {token!r}')
            if not -100.0 <= bias <= 100.0:  # False for NaN too
                raise ValueError(
                    f"`logit_bias` values must be numbers in [-100, 100]; got {bias!r} for {token}"
                )
        return value

    def biases(self) -> dict[int, float] | None:
        """``logit_bias`` keyed by token id, or None when it asks for nothing."""
        return {int(t): float(b) for t, b in self.logit_bias.items()} if self.logit_bias else None

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # OpenAI's fields this server does not implement: accepted only as asking for nothing (UNSUPPORTED)
    response_format: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # only means something with `tools`, which are refused
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None

    def max_tokens_field(self) -> tuple[int | None, str]:
        """The requested number of new tokens and the field that asked: ``max_completion_tokens``
        (OpenAI's current name) before ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    # OpenAI's fields this server does not implement: accepted only as asking for nothing (UNSUPPORTED)
    logprobs: Any = None
    suffix: Any = None
    best_of: Any = None

    @field_validator("best_of", mode="before")
    @classmethod
    def _best_of(cls, value: Any, info: ValidationInfo) -> Any:
        # best_of == n (OpenAI's default, n) asks for nothing beyond the n completions
        return None if value is not None and value == info.data.get("n", 1) else value

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
