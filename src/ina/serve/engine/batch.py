"""Rows decoded together: left-padded prefill, one-token steps on a shared KV cache, merging batches.

Left padding is exact: padded positions are masked out and position ids count real tokens only, so a
greedy answer in a batch equals the same request run alone. Rows for different adapters share each
forward pass: the adapters are stacked once when the runner is built (:mod:`ina.core.gathered`), and each
adapted layer computes all rows' adapters in two batched products, whatever the number of adapters.
Where that path does not apply (``INA_GATHERED=0``, or an adapter kind only PEFT computes), every call
passes PEFT's ``adapter_names`` (one per row, ``"__base__"`` for the base) instead.

Prompts are run in chunks (:class:`Prefill`, :meth:`ModelRunner.prefill_step`): each forward pass takes at
most a given number of prompt tokens, so the scheduler can decode the running batches between two chunks of
a long prompt. Chunks are exact too: each attends to the cache of the chunks before it. A batch holds a
left-padded cache of rows × its widest row, so batches far apart in width are not merged, and columns no
row uses any more (its widest row has finished) are cut off.
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
from ina.serve.engine.sampling import Adjustment
from ina.serve.engine.types import Generation, Stats

logger = logging.getLogger("ina.serve")

# Two batches merge only if left-padding them to one width adds at most this share of their tokens (or
# MERGE_MIN_WASTE tokens), unless there are already MAX_BATCHES batches: each batch is one forward pass per step.
MERGE_WASTE = 0.25
MERGE_MIN_WASTE = 256
MAX_BATCHES = 4


class Row:
    """Decoding state of one generation inside a batch."""

    def __init__(self, generation: Generation, seed: int, text: TextStream) -> None:
        self.generation = generation
        self.position = len(generation.prompt_ids)  # position id of the next token to feed
        self.generator = torch.Generator().manual_seed(seed)
        self.text = text
        self.adjustment: Adjustment | None = None  # its logit_bias and penalties, made at its first token

    def adjust(self, vocab_size: int) -> Adjustment | None:
        """The row's :class:`Adjustment` (None when it has none, or when its parameters are invalid:
        sampling then reports the error for this row alone)."""
        params = self.generation.params
        if self.adjustment is None and Adjustment.needed(params):
            try:
                self.adjustment = Adjustment(params, vocab_size)
            except Exception:
                return None
        return self.adjustment


class Batch:
    """Rows decoded together: their KV cache, 2-D attention mask and the logits of their next token."""

    def __init__(self, rows: list[Row], cache: Any, mask: torch.Tensor, logits: torch.Tensor) -> None:
        self.rows, self.cache = rows, cache
        self.mask = mask  # (B, L)
        self.logits = logits  # (B, V)


class Prefill:
    """Rows whose left-padded prompts are being run into a fresh KV cache, a chunk of columns at a time."""

    def __init__(self, rows: list[Row], input_ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> None:
        self.rows, self.cache = rows, cache
        self.input_ids = input_ids  # (B, W)
        self.mask = mask  # (B, W)
        self.done = 0  # columns already run into the cache

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    def keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (the others were cancelled)."""
        index = torch.tensor(keep, device=self.input_ids.device)
        if self.done:
            self.cache.batch_select_indices(index)
        self.input_ids, self.mask = self.input_ids[index], self.mask[index]
        self.rows = [self.rows[i] for i in keep]


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
        """Run the prompts of ``rows``, left-padded to one width, into a fresh KV cache (in one pass)."""
        batch = self.prefill_step(self.start_prefill(rows), None)
        assert batch is not None  # one step without a chunk size runs every column
        return batch

    def start_prefill(self, rows: list[Row]) -> Prefill:
        """The prompts of ``rows`` left-padded to one width, with an empty KV cache; nothing run yet."""
        from transformers import DynamicCache

        if self.prepared is not None:  # rows of one adapter side by side, in the order of the stacks:
            slots = self.prepared.slots  # equal groups of them need no gathering in adapted layers
            rows = sorted(rows, key=lambda row: slots.get(row.generation.adapter, -1))
        prompts = [row.generation.prompt_ids for row in rows]
        width = max(map(len, prompts))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, W), left-padded
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, W)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        return Prefill(rows, input_ids.to(self.device), mask.to(self.device), DynamicCache())

    def prefill_step(self, prefill: Prefill, max_tokens: int | None) -> Batch | None:
        """Run the next columns of ``prefill``: about ``max_tokens`` tokens (rows × columns; None: all).

        Returns the batch, ready to decode, once every column has run; None before.
        """
        rows, width = prefill.rows, prefill.width
        columns = width - prefill.done if max_tokens is None else max(1, max_tokens // len(rows))
        end = min(width, prefill.done + columns)
        for row in rows:  # position of the row's token in the chunk's last column (pads: negative, clamped)
            row.position = end - 1 - (width - len(row.generation.prompt_ids))
        input_ids = prefill.input_ids[:, prefill.done : end]  # (B, chunk)
        logits = self.forward(rows, input_ids, prefill.mask[:, :end], prefill.cache)
        prefill.done = end
        self.stats.add("prefill_chunks")
        if end < width:
            return None
        for row in rows:
            row.position = len(row.generation.prompt_ids)  # position id of the next token to feed
        self.stats.add("prefills")
        return Batch(rows, prefill.cache, prefill.mask, logits)

    def step(self, batch: Batch, keep: list[int], tokens: list[int]) -> None:
        """Keep rows ``keep`` of ``batch`` (dropping the others' cache) and feed each its next token."""
        if len(keep) < len(batch.rows):
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch.mask = batch.mask[index]
            batch.rows = [batch.rows[i] for i in keep]
            tokens = [tokens[i] for i in keep]
            self._trim(batch)
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

    def _trim(self, batch: Batch) -> None:
        """Cut the leading cache columns that no row attends to any more (its widest row has left)."""
        layers = self._cache_layers(batch.cache)
        used = batch.mask.any(dim=0)  # (L,)
        if layers is None or bool(used[0]) or not bool(used.any()):
            return
        first = int(used.nonzero()[0])
        batch.mask = batch.mask[:, first:]
        for layer in layers:  # keys / values: (B, heads, L, head_dim)
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def can_merge(self, a: Batch, b: Batch, batches: int = 1) -> bool:
        """Whether both caches are plain per-layer key/value tensors of the same depth, and padding them to
        one width wastes little (or there are already ``MAX_BATCHES`` of the ``batches`` running)."""
        la, lb = self._cache_layers(a.cache), self._cache_layers(b.cache)
        if la is None or lb is None or len(la) != len(lb):
            return False
        wa, wb = a.mask.shape[1], b.mask.shape[1]
        real = len(a.rows) * wa + len(b.rows) * wb
        waste = (len(a.rows) + len(b.rows)) * max(wa, wb) - real
        return waste <= max(MERGE_WASTE * real, MERGE_MIN_WASTE) or batches >= MAX_BATCHES

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
