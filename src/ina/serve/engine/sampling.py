"""Choosing each row's next token: greedy for temperature 0, else top-p sampling with the row's own seed.

Rows are independent: a row whose sampling fails (parameters no request can send through the API, a
non-finite distribution) gets a :class:`SamplingError` in its place; the other rows get their tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ina.serve.engine.types import SamplingParams

GREEDY_BELOW = 1e-5  # temperatures under this are greedy (dividing by them would overflow)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


class SamplingError(ValueError):
    """One row's next token cannot be sampled; the message names the parameter or the cause."""


def check_params(params: SamplingParams) -> None:
    """Raise :class:`SamplingError` naming the first parameter no row can be decoded with."""
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise SamplingError(f"`temperature` must be a finite number >= 0; got {params.temperature!r}")
    if not (0.0 < params.top_p <= 1.0):  # False for NaN too
        raise SamplingError(f"`top_p` must be in (0, 1]; got {params.top_p!r}")
    check_seed(params.seed)


def check_seed(seed: int | None) -> None:
    """Raise :class:`SamplingError` for a seed a ``torch.Generator`` refuses."""
    if seed is not None and not (isinstance(seed, int) and SEED_MIN <= seed <= SEED_MAX):
        raise SamplingError(f"`seed` must be an integer in [{SEED_MIN}, {SEED_MAX}]; got {seed!r}")


def next_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int | SamplingError]:
    """The next token of every row of ``logits`` (B, V), row ``i`` decoded with ``params[i]``.

    A row that cannot be sampled gets its :class:`SamplingError` instead of a token.
    """
    greedy = logits.argmax(dim=-1).tolist()  # (B,)
    tokens: list[int | SamplingError] = []
    for i, (row_params, generator) in enumerate(zip(params, generators, strict=True)):
        try:
            check_params(row_params)
            if row_params.temperature <= GREEDY_BELOW:
                tokens.append(greedy[i])
            else:
                tokens.append(sample(logits[i], row_params, generator))
        except Exception as error:  # this row only
            tokens.append(error if isinstance(error, SamplingError) else SamplingError(f"{error}"))
    return tokens


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from ``logits`` (V,) at ``params.temperature``, keeping the top-p nucleus.

    The most likely token is always kept, so any ``top_p`` in (0, 1] gives a valid distribution (one
    that rounds to 0 in float32 samples the top token).
    """
    probs = torch.softmax(logits.detach().cpu().double() / params.temperature, dim=-1)  # (V,)
    if not bool(torch.isfinite(probs).all()):
        raise SamplingError("the model's next-token distribution is not finite (NaN or infinite logits)")
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = (sorted_probs.cumsum(0) - sorted_probs) < params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
