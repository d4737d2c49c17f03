"""Forward hooks on each adapted layer: its input ``x`` and its InA branch ``Δ = s·B·f(h − ρ·max_r h)``.

The branch is recomputed from the layer's own weights with `ina.core.functional.ina_delta` (the one
equation; dropout is off in eval mode), on the rows the attention mask marks as real tokens. Two uses:

- `MomentCapture` streams ``XᵀX`` and ``XᵀΔ`` (float64) per layer for the fit; layers fed the same input
  tensor (q/k/v) share one ``XᵀX``;
- `ErrorCapture` measures, on held-out rows, how far a fitted map ``x·Aᵀ·Bᵀ`` is from ``Δ``.

No autograd: everything runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ina.core.functional import ina_delta
from ina.export.fit import Moments
from ina.foundation.errors import UsageError


@dataclass
class AdaptedLayer:
    """One layer an adapter changes: its name in the `PeftModel` (the tensor-name prefix) and its branch."""

    name: str
    module: nn.Module
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scaling: float
    inhibition: float
    activation: str
    negative_slope: float

    @property
    def shape(self) -> tuple[int, int]:
        """``(in, out)``."""
        return int(self.A.shape[1]), int(self.B.shape[0])

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The branch output for rows ``x`` (m × in)."""
        A, B = self.A.to(x.dtype), self.B.to(x.dtype)
        return ina_delta(x, A, B, self.scaling, self.inhibition, self.activation, self.negative_slope)


def adapted_layers(model: nn.Module, adapter: str) -> list[AdaptedLayer]:
    """Every layer of ``model`` (a `PeftModel`) that adapter ``adapter`` changes, in module order."""
    from peft.tuners.lora.layer import LoraLayer

    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter in getattr(module, "lora_embedding_A", {}):
            raise UsageError(
                f"SRC adapts the embedding {name!r}: an embedding branch is a table of token ids, not a linear "
                "map of an input, so it cannot be exported as a fitted LoRA; export adapters on linear layers"
            )
        if adapter not in module.lora_A:
            continue
        gates = getattr(module, "ina_gate", None)
        gate = gates[adapter] if gates is not None and adapter in gates else None
        layers.append(
            AdaptedLayer(
                name=name,
                module=module,
                A=module.lora_A[adapter].weight.detach(),
                B=module.lora_B[adapter].weight.detach(),
                scaling=float(module.scaling[adapter]),
                inhibition=gate.inhibition if gate is not None else 0.0,
                activation=gate.activation if gate is not None else "identity",
                negative_slope=gate.negative_slope if gate is not None else 0.0,
            )
        )
    if not layers:
        raise UsageError(
            f"SRC: the adapter {adapter!r} adapts no linear layer of the base model; nothing to export"
        )
    return layers


class _Hooks:
    """Forward hooks on the adapted layers, reading the rows the current attention mask keeps."""

    def __init__(self, layers: list[AdaptedLayer]) -> None:
        self.layers = layers
        self.rows: torch.Tensor | None = None  # (batch·seq,) bool: real tokens of the current batch

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.rows is None:
            return flat
        return flat[self.rows.to(flat.device)]

    def on_layer(self, index: int, x: torch.Tensor) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        for index, layer in enumerate(self.layers):

            def hook(module: nn.Module, args: tuple[Any, ...], output: Any, index: int = index) -> None:
                with torch.no_grad():
                    self.on_layer(index, args[0])

            handles.append(layer.module.register_forward_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


class MomentCapture(_Hooks):
    """Streams each layer's ``XᵀX`` / ``XᵀΔ`` (float64); layers fed the same tensor share ``XᵀX``."""

    def __init__(self, layers: list[AdaptedLayer]) -> None:
        super().__init__(layers)
        self.moments: list[Moments | None] = [None] * len(layers)
        self.leader: list[int] | None = None  # index of the layer whose XᵀX each layer shares
        self._pattern: list[int] = []
        self._last: tuple[int, torch.Tensor] | None = None

    def on_layer(self, index: int, x: torch.Tensor) -> None:
        # The previous hooked input is kept alive, so `is` means the very same tensor (q, k, v of one block).
        same = self._last is not None and self._last[1] is x
        leader = self._last[0] if same and self._last is not None else index
        self._last = (leader, x)
        if self.leader is None:
            self._pattern.append(leader)
        elif self.leader[index] != leader:
            raise RuntimeError(
                f"layer {self.layers[index].name}: its input changed sharing between batches; cannot stream XᵀX"
            )
        rows = self._rows(x)
        moments = self.moments[index]
        if moments is None:
            n_in, n_out = self.layers[index].shape
            shared = self.moments[leader].gram if leader != index else None  # type: ignore[union-attr]
            moments = self.moments[index] = Moments.zeros(n_in, n_out, gram=shared)
        moments.add(rows, self.layers[index].delta(rows), update_gram=leader == index)

    def end_batch(self) -> None:
        """Call after each forward pass: fixes the sharing pattern after the first one."""
        if self.leader is None and len(self._pattern) == len(self.layers):
            self.leader = self._pattern
        self._last = None


@dataclass
class LayerError:
    """Held-out error sums of one layer: ``‖Δ − Δ̂‖²``, ``‖Δ‖²`` and the row count."""

    residual_sq: float = 0.0
    target_sq: float = 0.0
    count: int = 0

    @property
    def relative(self) -> float:
        return self.residual_sq / self.target_sq if self.target_sq > 0 else 0.0


class ErrorCapture(_Hooks):
    """For each layer, the error of a fitted map ``Δ̂ = x·Aᵀ·Bᵀ`` (float64) against the InA branch ``Δ``."""

    def __init__(self, layers: list[AdaptedLayer], fitted: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(layers)
        self.fitted = [(A.to(torch.float64), B.to(torch.float64)) for A, B in fitted]
        self.errors = [LayerError() for _ in layers]

    def on_layer(self, index: int, x: torch.Tensor) -> None:
        rows = self._rows(x)
        target = self.layers[index].delta(rows).to(torch.float64)
        A, B = self.fitted[index]
        estimate = (rows.to(torch.float64) @ A.T.to(rows.device)) @ B.T.to(rows.device)
        error = self.errors[index]
        error.residual_sq += float((target - estimate).square().sum())
        error.target_sq += float(target.square().sum())
        error.count += rows.shape[0]
