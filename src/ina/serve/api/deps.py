"""What routes receive: the app's engine and settings (no module-level state), and this server's limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ina.serve.api import schemas
from ina.serve.api.errors import invalid_request
from ina.serve.engine import Engine, SamplingParams
from ina.serve.settings import ServeSettings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[ServeSettings, Depends(get_settings)]


def max_tokens_of(settings: ServeSettings, requested: int | None, param: str = "max_tokens") -> int:
    """``requested`` if within the server's cap (else 400), or the server's default when not given."""
    if requested is None:
        return settings.default_max_tokens
    if requested > settings.max_tokens_cap:
        raise invalid_request(
            f"`{param}` must be at most {settings.max_tokens_cap} on this server (--max_tokens_cap); "
            f"got {requested}",
            param,
            "max_tokens_exceeded",
        )
    return requested


def check_request(
    engine: Engine, settings: ServeSettings, body: schemas.ChatCompletionRequest | schemas.CompletionRequest
) -> None:
    """Refuse an unknown model (404), more choices than the server allows and sampling no row can use (400)."""
    engine.resolve(body.model)
    if body.n > settings.max_n:
        raise invalid_request(
            f"`n` must be at most {settings.max_n} on this server; got {body.n}", "n", "too_many_choices"
        )
    prompts = (
        len(body.prompt)
        if isinstance(body, schemas.CompletionRequest) and isinstance(body.prompt, list)
        else 1
    )
    limit = engine.limits["max_rows_per_request"]
    if prompts * body.n > limit:
        # More rows than one request may hold could never be accepted: a bad request, not a busy server.
        param = "prompt" if prompts > limit else "n"
        raise invalid_request(
            f"a request may ask for at most {limit} completions (--max_rows_per_request): `n` ({body.n}) times "
            f"the number of prompts ({prompts}) is {prompts * body.n}; send fewer prompts per request",
            param,
            "too_many_choices",
        )
    engine.check_sampling(sampling(body, 1, 0))  # penalties in range, logit_bias ids in the vocabulary


def sampling(
    body: schemas.ChatCompletionRequest | schemas.CompletionRequest, max_tokens: int, i: int
) -> SamplingParams:
    """How choice ``i`` of ``body`` is decoded (its seed is ``seed + i``, so choices differ yet repeat)."""
    seed = None if body.seed is None else body.seed + i
    if seed is not None and seed > schemas.SEED_MAX:  # the largest seeds wrap around for the later choices
        seed -= schemas.SEED_MAX + 1
    return SamplingParams(
        max_tokens,
        body.temperature,
        body.top_p,
        body.stops(),
        seed,
        body.frequency_penalty,
        body.presence_penalty,
        body.biases(),
    )
