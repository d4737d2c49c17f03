"""The InA equation, as pure tensor functions (no modules, no PEFT).

Kang, Prokop, Tong, Zhou, Hu, Novak. *InA: Inhibition Adaption on pre-trained language models.*
Neural Networks 178 (2024) 106410. For one adapted layer with frozen ``W0``, bias ``b``, rank ``r``,
scaling ``s`` and inhibition ratio ``ρ ∈ [0, 1)``::

    h = A · dropout(x)               # (*, r)
    g = f(h − ρ · max_r(h))          # (*, r)  max over the rank axis, one value per token
    y = W0 · x + b + s · B · g       # (*, out)

``ρ = 0`` switches the gate off (``g = h``): the layer is exactly LoRA, whatever ``f``. The max is
not detached, so gradients reach ``A`` through the threshold too. Every layer, kernel and reference
in this package calls or is tested against :func:`inhibit`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: tuple[str, ...] = ("leaky_relu", "gelu", "identity")


def activation_fn(activation: str, negative_slope: float = 0.01) -> Callable[[torch.Tensor], torch.Tensor]:
    """The gate's non-linearity ``f`` by name (one of :data:`ACTIVATIONS`)."""
    if activation == "leaky_relu":
        return lambda t: F.leaky_relu(t, negative_slope)
    if activation == "gelu":
        return F.gelu
    if activation == "identity":
        return lambda t: t
    raise ValueError(f"`activation` must be one of {list(ACTIVATIONS)}; got {activation!r}")


def subtract_threshold(h: torch.Tensor, inhibition: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate's input ``h − ρ · max_r(h)`` (*, r) and the per-token maximum ``max_r(h)`` (*, 1).

    A unit is inhibited where the first is negative (``h`` below the threshold ``ρ · max_r(h)``).
    """
    token_max = h.amax(dim=-1, keepdim=True)  # (*, 1)
    # one operation, rounded once: ``h - ρ * max`` would round the threshold first (and cost a kernel more)
    return torch.sub(h, token_max, alpha=inhibition), token_max


def inhibit(
    h: torch.Tensor, inhibition: float, activation: str = "leaky_relu", negative_slope: float = 0.01
) -> torch.Tensor:
    """Shunting inhibition of the rank-r activations, per token: ``f(h − ρ · max_r(h))``.

    ``h`` has shape ``(*, r)``: the threshold is taken over the last (rank) axis only, so each token
    (each row of any leading shape) is gated on its own. ``inhibition == 0`` returns ``h`` unchanged.
    """
    if inhibition == 0:
        return h
    shifted, _ = subtract_threshold(h, inhibition)  # (*, r)
    return activation_fn(activation, negative_slope)(shifted)  # (*, r)


def ina_delta(
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    inhibition: float,
    activation: str = "leaky_relu",
    negative_slope: float = 0.01,
) -> torch.Tensor:
    """The adapter branch ``s · B · f(h − ρ·max_r h)`` with ``h = A · x`` (dropout already applied).

    Shapes: ``x`` (*, in), ``lora_A`` (r, in), ``lora_B`` (out, r) → (*, out).
    """
    h = x @ lora_A.T  # (*, r)
    return (inhibit(h, inhibition, activation, negative_slope) @ lora_B.T) * scaling  # (*, out)
