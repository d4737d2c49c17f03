"""The gate on vLLM's shrink buffer: per token, per adapter slot, per slice (torch only, no vLLM).

vLLM computes a linear LoRA layer in two steps (punica's "shrink" and "expand")::

    buffer[s, t, :] = A[slot(t), s] · x[t]            # (S, T, R)  S slices, T tokens, R = max_lora_rank
    y[t, slice s] += B[slot(t), s] · buffer[s, t, :]

InA puts its gate between the two, on the rows of each token whose slot holds an InA adapter::

    buffer[s, t, :r] = f(h − ρ·max_r h),  h = buffer[s, t, :r]   # r: that adapter's rank on slice s

Taking ``:r`` leaves the zero-padded ranks (``r < R``) out of the max, as ``core/gathered.py`` masks
them; each slice of a packed layer (q/k/v, gate/up) has its own A, so its own max. The gate itself
is :func:`ina.core.functional.inhibit`. Rows of plain LoRA slots and of the base (slot −1) are not
touched, so their values stay bit for bit those of vLLM's own path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ina.core.functional import inhibit

from .adapters import AdapterGate

# slot -> a (T, 1) mask of the token rows that use it; None: every row (the batch uses that one slot only)
Rows = Mapping[int, "torch.Tensor | None"]


def _runs(ranks: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """``(first, end, rank)`` of each run of consecutive slices with the same non-zero rank."""
    runs: list[list[int]] = []
    for s, rank in enumerate(ranks):
        if rank == 0:  # this slice is not adapted: h = 0, and so is B
            continue
        if runs and runs[-1][1] == s and runs[-1][2] == rank:
            runs[-1][1] = s + 1
        else:
            runs.append([s, s + 1, rank])
    return tuple((first, end, rank) for first, end, rank in runs)


@dataclass(frozen=True)
class SlotGate:
    """One layer's gate for the adapter in one slot: the adapter's gate and its rank on each slice (0: not adapted)."""

    gate: AdapterGate
    ranks: tuple[int, ...]
    runs: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", _runs(self.ranks))  # slices gated together, by one op each


BASE = -1  # vLLM's slot of a token that runs the base model alone


def rows_by_slot(token_slots: torch.Tensor) -> dict[int, torch.Tensor | None]:
    """Which rows of a forward pass each slot owns (base rows under :data:`BASE`), as a (T, 1) mask, from
    vLLM's ``token_lora_indices`` (T,). A batch of one slot maps it to None (every row, no mask).
    Computed once per step (``patches._step_rows``), shared by every layer."""
    slots = torch.unique(token_slots).tolist()
    if len(slots) == 1:
        return {slots[0]: None}
    return {slot: (token_slots == slot).unsqueeze(1) for slot in slots}


def clear_base_rows(buffer: torch.Tensor, rows: Rows) -> None:
    """Zero the base rows of the shrink ``buffer`` (S, T, R), so that expand adds nothing to them.

    vLLM's CPU kernels (``vllm/lora/ops/torch_ops``) index the stacked weights with the slot, and a base
    row's −1 picks the last slot: when that slot holds an adapter, base rows get its delta.
    """
    if BASE in rows:
        mask = rows[BASE]
        if mask is None:
            buffer.zero_()
        else:
            buffer.masked_fill_(mask, 0.0)


def gate_buffer(buffer: torch.Tensor, rows: Rows, gates: Mapping[int, SlotGate]) -> None:
    """Apply each slot's gate, in place, to its rows of the shrink ``buffer`` (S, T, R).

    One :func:`inhibit` per run of slices of equal rank (all the slices of a layer, when its ranks are
    shared) on a view of the buffer; in a mixed batch the gate runs over every row of the view and
    ``torch.where`` keeps it for the slot's rows only. Each element is computed by the same ops as
    :func:`inhibit` on that slice alone (the max is over the rank axis only), so the values are the same
    bit for bit.
    """
    for slot, slot_gate in gates.items():
        if slot < 0 or slot not in rows:
            continue
        mask = rows[slot]
        gate = slot_gate.gate
        for first, end, rank in slot_gate.runs:
            h = buffer[first:end, :, :rank]  # (k, T, r) view: the adapter's own ranks only
            gated = inhibit(h, gate.inhibition, gate.activation, gate.negative_slope)
            h.copy_(gated if mask is None else torch.where(mask, gated, h))
