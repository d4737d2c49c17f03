"""Request and response models of the HTTP API (the OpenAI shapes, plus the seed's ``/completion``).

Requests are validated strictly (a string is not a number); unknown fields are ignored, as OpenAI
clients send fields we do not use.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


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
    seed: int | None = None
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
    seed: int | None = None


class AttentionRequest(_Request):
    """``POST /v1/attention``: head-averaged attention maps of one model on one text (or pair)."""

    model: str
    text: str = Field(min_length=1)
    text_pair: str | None = None
    layers: list[int] | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    """An OpenAI-style object id, e.g. ``chatcmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def model_card(model_id: str, owned_by: str, created: int, **extra: Any) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}
