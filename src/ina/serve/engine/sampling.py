"""Choosing each row's next token: greedy for temperature 0, else top-p sampling with the row's own seed.

Before either, a row's ``logit_bias`` and its frequency and presence penalties (OpenAI's semantics, see
:class:`~ina.serve.engine.types.SamplingParams`) adjust its logits. Rows are independent: a row whose
sampling fails (parameters no request can send through the API, a non-finite distribution) gets a
:class:`SamplingError` in its place; the other rows get their tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ina.serve.engine.types import SamplingParams

GREEDY_BELOW = 1e-5  # temperatures under this are greedy (dividing by them would overflow)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
PENALTY_RANGE = (-2.0, 2.0)  # OpenAI's range for frequency_penalty and presence_penalty
BIAS_RANGE = (-100.0, 100.0)  # OpenAI's range for each logit_bias value


class SamplingError(ValueError):
    """One row's next token cannot be sampled; the message names the parameter (``param``) or the cause."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _number_in(value: object, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    )  # NaN: False


def check_params(params: SamplingParams, vocab_size: int | None = None) -> None:
    """Raise :class:`SamplingError` naming the first parameter no row can be decoded with.

    ``vocab_size``: the model's, to check ``logit_bias``'s token ids (not checked when None).
    """
    if not _number_in(params.temperature, 0.0, math.inf) or math.isinf(params.temperature):
        raise SamplingError(
            f"`temperature` must be a finite number >= 0; got {params.temperature!r}", "temperature"
        )
    if not (0.0 < params.top_p <= 1.0):  # False for NaN too
        raise SamplingError(f"`top_p` must be in (0, 1]; got {params.top_p!r}", "top_p")
    check_seed(params.seed)
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(params, name)
        if not _number_in(value, *PENALTY_RANGE):
            raise SamplingError(f"`{name}` must be a number in [-2, 2]; got {value!r}", name)
    for token, bias in (params.logit_bias or {}).items():
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise SamplingError(
                f"`logit_bias` keys must be token ids (integers >= 0); got {token!r}", "logit_bias"
            )
        if vocab_size is not None and token >= vocab_size:
            raise SamplingError(
                f"`logit_bias` keys must be token ids below the vocabulary size {vocab_size}; got {token}",
                "logit_bias",
            )
        if not _number_in(bias, *BIAS_RANGE):
            raise SamplingError(
                f"`logit_bias` values must be numbers in [-100, 100]; got {bias!r} for token {token}",
                "logit_bias",
            )


def check_seed(seed: int | None) -> None:
    """Raise :class:`SamplingError` for a seed a ``torch.Generator`` refuses."""
    if seed is not None and not (isinstance(seed, int) and SEED_MIN <= seed <= SEED_MAX):
        raise SamplingError(f"`seed` must be an integer in [{SEED_MIN}, {SEED_MAX}]; got {seed!r}", "seed")


class Adjustment:
    """One row's ``logit_bias`` and penalties as dense (V,) tensors: per-token work O(V), whatever the length."""

    def __init__(self, params: SamplingParams, vocab_size: int) -> None:
        check_params(params, vocab_size)
        self.frequency, self.presence = float(params.frequency_penalty), float(params.presence_penalty)
        self.bias: torch.Tensor | None = None  # (V,)
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size, dtype=torch.float64)
            tokens = torch.tensor(list(params.logit_bias), dtype=torch.long)
            self.bias[tokens] = torch.tensor(list(params.logit_bias.values()), dtype=torch.float64)
        self.counts = (
            torch.zeros(vocab_size, dtype=torch.float64) if self.frequency or self.presence else None
        )

    @staticmethod
    def needed(params: SamplingParams) -> bool:
        return bool(params.logit_bias) or bool(params.frequency_penalty) or bool(params.presence_penalty)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (V,) + bias - count · frequency_penalty - [count > 0] · presence_penalty, in float64."""
        adjusted = logits.detach().cpu().double()
        if self.bias is not None:
            adjusted = adjusted + self.bias
        if self.counts is not None:
            adjusted = adjusted - self.counts * self.frequency - (self.counts > 0).double() * self.presence
        return adjusted

    def observe(self, token: int) -> None:
        """The row generated ``token``."""
        if self.counts is not None and 0 <= token < self.counts.numel():
            self.counts[token] += 1


def next_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    adjustments: Sequence[Adjustment | None] | None = None,
) -> list[int | SamplingError]:
    """The next token of every row of ``logits`` (B, V), row ``i`` decoded with ``params[i]``.

    ``adjustments[i]``: row ``i``'s bias and penalties (see :class:`Adjustment`), or None.
    A row that cannot be sampled gets its :class:`SamplingError` instead of a token.
    """
    greedy = logits.argmax(dim=-1).tolist()  # (B,)
    vocab_size = logits.shape[-1]
    tokens: list[int | SamplingError] = []
    for i, (row_params, generator) in enumerate(zip(params, generators, strict=True)):
        try:
            check_params(row_params, vocab_size)
            adjustment = adjustments[i] if adjustments is not None else None
            if adjustment is None and Adjustment.needed(row_params):
                adjustment = Adjustment(row_params, vocab_size)
            row = logits[i] if adjustment is None else adjustment.apply(logits[i])  # (V,)
            if row_params.temperature <= GREEDY_BELOW:
                tokens.append(greedy[i] if adjustment is None else int(row.argmax()))
            else:
                tokens.append(sample(row, row_params, generator))
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
