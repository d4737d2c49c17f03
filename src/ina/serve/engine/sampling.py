"""Choosing each row's next token: greedy for temperature 0, else top-p sampling with the row's own seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ina.serve.engine.types import SamplingParams

GREEDY_BELOW = 1e-5  # temperatures under this are greedy (dividing by them would overflow)


def next_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """The next token of every row of ``logits`` (B, V), row ``i`` decoded with ``params[i]``."""
    greedy = logits.argmax(dim=-1).tolist()  # (B,)
    tokens = []
    for i, (row_params, generator) in enumerate(zip(params, generators, strict=True)):
        if row_params.temperature <= GREEDY_BELOW:
            tokens.append(greedy[i])
        else:
            tokens.append(sample(logits[i], row_params, generator))
    return tokens


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from ``logits`` (V,) at ``params.temperature``, keeping the top-p nucleus."""
    probs = torch.softmax(logits.cpu() / params.temperature, dim=-1)  # (V,)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = (sorted_probs.cumsum(0) - sorted_probs) < params.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
