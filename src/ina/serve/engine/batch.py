"""Rows decoded together: left-padded prefill, one-token steps on a shared KV cache, merging batches.

Left padding is exact: padded positions are masked out and position ids count real tokens only, so a
greedy answer in a batch equals the same request run alone. Rows for different adapters share each
forward pass: the adapters are stacked once when the runner is built (:mod:`ina.core.gathered`), and each
adapted layer computes all rows' adapters in two batched products, whatever the number of adapters.
Where that path does not apply (``INA_GATHERED=0``, or an adapter kind only PEFT computes), every call
passes PEFT's ``adapter_names`` (one per row, ``"__base__"`` for the base) instead.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any

import torch
from torch import nn

from ina.core import gathered
from ina.serve.engine.detokenize import TextStream
from ina.serve.engine.types import Generation, Stats

logger = logging.getLogger("ina.serve")


class Row:
    """Decoding state of one generation inside a batch."""

    def __init__(self, generation: Generation, seed: int, text: TextStream) -> None:
        self.generation = generation
        self.position = len(generation.prompt_ids)  # position id of the next token to feed
        self.generator = torch.Generator().manual_seed(seed)
        self.text = text


class Batch:
    """Rows decoded together: their KV cache, 2-D attention mask and the logits of their next token."""

    def __init__(self, rows: list[Row], cache: Any, mask: torch.Tensor, logits: torch.Tensor) -> None:
        self.rows, self.cache = rows, cache
        self.mask = mask  # (B, L)
        self.logits = logits  # (B, V)


class ModelRunner:
    """The forward passes of a batch: prefill, one decode step, and merging two batches into one."""

    def __init__(self, model: nn.Module, is_peft: bool, pad_id: int, stats: Stats) -> None:
        self.model, self.is_peft, self.pad_id, self.stats = model, is_peft, pad_id, stats
        self.device = next(model.parameters()).device
        base = model.get_base_model() if is_peft else model  # type: ignore[operator]
        parameters = inspect.signature(base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._takes_positions = "position_ids" in parameters
        self._takes_logits_to_keep = "logits_to_keep" in parameters
        self.prepared = self._prepare(model) if is_peft else None
        # with the adapters prepared, the transformers model is called directly: each adapted layer
        # routes its rows itself, so PEFT's per-call hooks for `adapter_names` are not needed
        self._call = base if self.prepared is not None else model

    @staticmethod
    def _prepare(model: nn.Module) -> gathered.PreparedAdapters | None:
        """Stack the adapters once for mixed batches; None (PEFT's path) where that does not apply."""
        if not gathered.is_enabled():
            logger.info("INA_GATHERED=0: mixed-adapter batches run through PEFT, one adapter at a time")
            return None
        try:
            return gathered.prepare(model)
        except gathered.NotPreparableError as error:
            logger.warning("mixed-adapter batches run through PEFT, one adapter at a time: %s", error)
            return None

    def forward(
        self, rows: list[Row], input_ids: torch.Tensor, mask: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """One forward pass of ``rows`` (each with its own adapter); the logits of each row's last position."""
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True, self._cache_kwarg: cache}
        if self._takes_positions:
            width = input_ids.shape[1]
            last = torch.tensor([row.position for row in rows], device=self.device)[:, None]  # (B, 1)
            kwargs["position_ids"] = (last - width + torch.arange(1, width + 1, device=self.device)).clamp(
                min=0
            )  # (B, width)
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        adapters = [row.generation.adapter for row in rows]
        route: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.prepared is not None:
            route = self.prepared.route(adapters)
        elif self.is_peft:
            kwargs["adapter_names"] = adapters
        with route:
            output = self._call(input_ids=input_ids, **kwargs)
        self.stats.peak("max_rows_in_step", len(rows))
        self.stats.peak("max_adapters_in_step", len({row.generation.adapter for row in rows}))
        return output.logits[:, -1, :].float()  # (B, V)

    def prefill(self, rows: list[Row]) -> Batch:
        """Run the prompts of ``rows``, left-padded to one width, into a fresh KV cache."""
        from transformers import DynamicCache

        if self.prepared is not None:  # rows of one adapter side by side, in the order of the stacks:
            slots = self.prepared.slots  # equal groups of them need no gathering in adapted layers
            rows = sorted(rows, key=lambda row: slots.get(row.generation.adapter, -1))
        prompts = [row.generation.prompt_ids for row in rows]
        width = max(map(len, prompts))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, L), left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        for row in rows:
            row.position = len(row.generation.prompt_ids) - 1  # position of the last prompt token
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        logits = self.forward(rows, input_ids, mask, cache)
        for row in rows:
            row.position += 1
        self.stats.add("prefills")
        return Batch(rows, cache, mask, logits)

    def step(self, batch: Batch, keep: list[int], tokens: list[int]) -> None:
        """Keep rows ``keep`` of ``batch`` (dropping the others' cache) and feed each its next token."""
        if len(keep) < len(batch.rows):
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch.mask = batch.mask[index]
            batch.rows = [batch.rows[i] for i in keep]
            tokens = [tokens[i] for i in keep]
        input_ids = torch.tensor(tokens, device=self.device)[:, None]  # (B, 1)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(keep), 1))], dim=1)  # (B, L + 1)
        batch.logits = self.forward(batch.rows, input_ids, batch.mask, batch.cache)
        for row in batch.rows:
            row.position += 1

    @staticmethod
    def _cache_layers(cache: Any) -> list[Any] | None:
        layers = getattr(cache, "layers", None)
        if not layers or any(getattr(layer, "keys", None) is None or layer.is_sliding for layer in layers):
            return None
        return layers

    def can_merge(self, a: Batch, b: Batch) -> bool:
        """Whether both caches are plain per-layer key/value tensors of the same depth."""
        la, lb = self._cache_layers(a.cache), self._cache_layers(b.cache)
        return la is not None and lb is not None and len(la) == len(lb)

    def merge(self, a: Batch, b: Batch) -> Batch:
        """One batch from two: the shorter one's KV cache and mask are left-padded (masked zeros)."""
        width = max(a.mask.shape[1], b.mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for layer_a, layer_b in zip(a.cache.layers, b.cache.layers, strict=True):
            # keys / values: (B, heads, L, head_dim)
            layer_a.keys = torch.cat([pad(layer_a.keys, 2), pad(layer_b.keys, 2)], dim=0)
            layer_a.values = torch.cat([pad(layer_a.values, 2), pad(layer_b.values, 2)], dim=0)
        mask = torch.cat([pad(a.mask, 1), pad(b.mask, 1)], dim=0)  # (B, L)
        self.stats.add("merges")
        return Batch(a.rows + b.rows, a.cache, mask, torch.cat([a.logits, b.logits], dim=0))
