"""The training benchmark's variants: one model carrying both adapters, and a switch between them.

* ``base`` — the frozen model with the adapter layers swapped out for their base layers;
* ``lora`` — PEFT's own LoRA forward (an adapter with ρ = 0 has no InA variant, so PEFT's
  ``lora.Linear.forward`` runs unchanged: ``result + lora_B(lora_A(dropout(x))) * scaling``);
* ``ina-reference`` — InA with ``ρ > 0`` on the reference path (:func:`ina.inhibit` between PEFT's modules);
* ``ina-fast`` — the same adapter on the fused path (:mod:`ina.core.fast`); when decoding, on the inference
  path (:mod:`ina.core.gathered`: the adapter prepared once, no autograd, no PEFT dispatch per layer).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator

import torch
from torch import nn

from ina.bench.models import adapter_config, build_model
from ina.bench.settings import BenchSettings
from ina.core import gathered
from ina.foundation.harness import peft_model
from ina.foundation.models import resolve_device, resolve_dtype

#: Recompilations a compiled bench needs: switching variants changes the guards each time; at dynamo's
#: default (8) the model would fall back to eager part-way through the run.
RECOMPILE_LIMIT = 16


class Bench:
    """The model with both adapters, and a way to switch between the variants."""

    def __init__(self, settings: BenchSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device, "--dtype")
        model = build_model(settings, self.device, self.dtype)
        model.enable_input_require_grads()  # the frozen base still back-propagates through every layer
        model.config.use_cache = False
        autocast_adapter = settings.adapter_dtype == "float32"
        self.peft_model = peft_model(
            model,
            adapter_config(settings, 0.0),
            adapter_name="plain",
            autocast_adapter_dtype=autocast_adapter,
        )
        self.peft_model.add_adapter(
            "inhibited",
            adapter_config(settings, settings.inhibition),
            autocast_adapter_dtype=autocast_adapter,
        )
        self.model = self.peft_model.get_base_model()
        self.adapted = self._adapted_layers()
        self.compiled: nn.Module | None = None
        if settings.compile:  # run under `recompile_limit(RECOMPILE_LIMIT)` (run_bench does)
            self.compiled = torch.compile(self.model)
        self.optimizers: dict[str, torch.optim.Optimizer | None] = {}
        self.prepared: gathered.PreparedAdapters | None = None
        generator = torch.Generator().manual_seed(settings.seed)
        vocab = self.model.config.vocab_size
        batch, seq = self.batch_shape()
        self.input_ids = torch.randint(3, vocab, (batch, seq), generator=generator).to(self.device)

    def batch_shape(self) -> tuple[int, int]:
        return self.settings.batch_shape()

    def _adapted_layers(self) -> list[tuple[nn.Module, str, nn.Module]]:
        from peft.tuners.lora import LoraLayer

        found = []
        for module in self.model.modules():
            for child_name, child in module.named_children():
                if isinstance(child, LoraLayer):
                    found.append((module, child_name, child))
        return found

    @contextlib.contextmanager
    def variant(self, name: str) -> Iterator[None]:
        """Set the model up as variant ``name`` for the duration of the block."""
        from ina.core import fast

        if name == "base":
            for parent, child_name, layer in self.adapted:
                setattr(parent, child_name, layer.get_base_layer())
            try:
                yield
            finally:
                for parent, child_name, layer in self.adapted:
                    setattr(parent, child_name, layer)
            return
        self.peft_model.base_model.set_adapter("plain" if name == "lora" else "inhibited")
        with fast.enabled(name == "ina-fast"):
            yield

    @contextlib.contextmanager
    def decoding(self, name: str) -> Iterator[None]:
        """Variant ``name`` set up for decoding: ``ina-fast`` runs InA's inference path (:mod:`ina.core.gathered`),
        prepared from the adapter's current weights; the others run as in training."""
        with self.variant(name):
            if name != "ina-fast":
                yield
                return
            if self.prepared is None:
                self.prepared = gathered.prepare(self.peft_model, ["inhibited"])
            else:
                self.prepared.refresh()  # the weights the training steps left, routed again
            try:
                with self.prepared.route("inhibited"):
                    yield
            finally:
                self.prepared.close()  # the other variants run PEFT's forward, untouched

    def optimizer(self, name: str) -> torch.optim.Optimizer | None:
        if name not in self.optimizers:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizers[name] = torch.optim.AdamW(params, lr=1e-4) if params else None
        return self.optimizers[name]

    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def forward_model(self) -> nn.Module:
        return self.compiled if self.compiled is not None else self.model

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, name: str) -> tuple[float, float]:
        """One training step of the active variant: (wall seconds, CPU seconds of this process)."""
        optimizer = self.optimizer(name)
        model = self.forward_model()
        self.sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = model(input_ids=self.input_ids, labels=self.input_ids).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self.sync()
        return time.perf_counter() - start, time.process_time() - start_cpu

    def saved_for_backward(self, name: str) -> int:
        """Bytes kept for backward in one forward pass (unique storages, parameters excluded)."""
        parameters = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in parameters:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.model(input_ids=self.input_ids, labels=self.input_ids).loss
        loss.backward()
        optimizer = self.optimizer(name)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        return sum(seen.values())

    def decode_intervals(self, new_tokens: int) -> tuple[list[float], list[float]]:
        """Seconds between successive tokens of one greedy ``generate`` (batch 1), wall and CPU time of this
        process: the prefill is excluded."""
        from transformers import LogitsProcessor, LogitsProcessorList

        bench = self
        stamps: list[tuple[float, float]] = []

        class Clock(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                bench.sync()
                stamps.append((time.perf_counter(), time.process_time()))
                return scores

        self.model.generate(
            self.input_ids[:1, :16],
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([Clock()]),
        )
        pairs = list(itertools.pairwise(stamps))
        return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]
