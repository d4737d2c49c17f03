"""InA's inference path: many adapters in one batch at the cost of one, and decoding without per-call overhead.

PEFT runs a batch whose rows use different adapters (``adapter_names=``) one adapter at a time: every
adapted layer selects each adapter's rows, runs them, and writes them back, so the cost of a forward
pass grows with the number of adapters in the batch. :func:`prepare` stacks, once, the adapters of
every adapted layer (ranks padded to the layer's largest, ``s·Bᵀ`` with the scaling folded in), and
:meth:`PreparedAdapters.route` runs a forward pass with one adapter per row. For one layer with
adapters ``k = 1..N`` and the batch's adapter rows grouped by adapter (``K`` groups of at most ``C``
rows; a short group repeats its first row, whose output is discarded)::

    h = x_g · A_gᵀ                       # (K, C·T, R)   one batched product over the stacked A
    m = max_r(h + mask_g)                # (K, C·T, 1)   mask: −inf on padded ranks, so padding never wins
    g = f_k(h − ρ_k · m)                 # (K, C·T, R)   each group's own ρ, activation and slope
    y[rows] = result[rows] + g · (s·Bᵀ)_g   # one batched product with the stacked B; base rows: result

which is :func:`ina.core.functional.inhibit` per row (``tests/core/test_gathered.py`` holds it there, and
to PEFT's per-adapter path). A batch of one adapter skips the grouping: ``h = x·Aᵀ`` on the adapter's
own weights, the gate from :mod:`ina.core.functional`, one ``addmm``.

Inference only: the stacks are copies taken by :func:`prepare` (call :meth:`PreparedAdapters.refresh`
after changing adapter weights), nothing is recorded for autograd, and :meth:`~PreparedAdapters.route`
refuses to run with gradients enabled or the model in training mode. Outside a route every layer runs
PEFT's own forward, unchanged. ``INA_GATHERED=0`` tells callers (the serving engine) not to use it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ina.core.functional import activation_fn, subtract_threshold

BASE = "__base__"  # PEFT's name for rows that run the base model alone
_state = threading.local()  # the route of the forward pass running on this thread

GateSetting = tuple[float, str, float]  # (ρ, activation, negative slope) of one adapter


def is_enabled() -> bool:
    """Whether callers should use this path (default yes; ``INA_GATHERED=0`` turns it off)."""
    return os.environ.get("INA_GATHERED", "1").strip().lower() not in ("0", "false", "no", "off")


class NotPreparableError(ValueError):
    """The model holds a layer or adapter kind this path does not compute; PEFT's path must be used."""


# --------------------------------------------------------------------------------------- the gate, per group


class GroupGate:
    """The gates of ``K`` groups, one :data:`GateSetting` each, applied to ``h`` of shape (K, M, R)."""

    def __init__(self, settings: Sequence[GateSetting], device: torch.device, dtype: torch.dtype) -> None:
        rhos = [rho for rho, _, _ in settings]
        self.off = all(rho == 0 for rho in rhos)
        self.rho = rhos[0] if len(set(rhos)) == 1 else None  # one ρ: functional's own subtraction
        self.neg_rho = torch.tensor([-rho for rho in rhos], dtype=dtype, device=device).view(-1, 1, 1)
        on = [(activation, slope) for rho, activation, slope in settings if rho != 0]
        self.single: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.parts: list[tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = []
        self.gate_off: torch.Tensor | None = None
        if len(set(on)) == 1 and len(on) == len(settings):  # every group gated the same way
            self.single = activation_fn(*on[0])
            return
        for activation, slope in dict.fromkeys(on):
            member = [rho != 0 and (a, s) == (activation, slope) for rho, a, s in settings]
            self.parts.append((activation_fn(activation, slope), _column(member, device)))
        if len(on) < len(settings):
            self.gate_off = _column([rho == 0 for rho, _, _ in settings], device)

    def __call__(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``f_k(h − ρ_k · max_r(h))`` for each group ``k`` (padded ranks, ``mask`` −inf, never the max)."""
        if self.off:
            return h  # every gate off: LoRA
        if self.rho is not None and mask is None:
            z, _ = subtract_threshold(h, self.rho)  # functional's own step
        else:
            m = (h if mask is None else h + mask).amax(dim=-1, keepdim=True)  # (K, M, 1)
            z = torch.sub(h, m, alpha=self.rho) if self.rho is not None else torch.addcmul(h, m, self.neg_rho)
        if self.single is not None:
            return self.single(z)
        g = z if self.gate_off is None else torch.where(self.gate_off, h, z)
        for fn, member in self.parts:
            g = torch.where(member, fn(z), g)
        return g


def _column(flags: list[bool], device: torch.device) -> torch.Tensor:
    return torch.tensor(flags, device=device).view(-1, 1, 1)  # (K, 1, 1)


# --------------------------------------------------------------------------------------- one layer's stack


class LayerStack:
    """One adapted layer's adapters for the prepared slots: stacked (mixed batches) and one by one."""

    def __init__(self, layer: nn.Module, slots: Sequence[str], shared: dict[Any, Any]) -> None:
        from peft.tuners.lora import Embedding

        self.layer = layer
        self.embedding = isinstance(layer, Embedding)
        names = layer.lora_embedding_A if self.embedding else layer.lora_A
        present = [name in names for name in slots]
        self.empty = not any(present)
        if self.empty:
            return
        gates = getattr(layer, "ina_gate", {})
        weights: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        settings: list[GateSetting] = []
        for name, here in zip(slots, present, strict=True):
            weights.append(self._weights(name) if here else None)  # (r, in | V), (r, out) with s folded in
            gate = gates[name] if here and name in layer.lora_variant else None
            settings.append(
                (gate.inhibition, gate.activation, gate.negative_slope) if gate else (0.0, "identity", 0.0)
            )
        real = [w for w in weights if w is not None]
        rank = max(a.shape[0] for a, _ in real)  # R
        dtype, device = real[0][0].dtype, real[0][0].device
        self.dtype = dtype
        zeros_a = torch.zeros(rank, real[0][0].shape[1], dtype=dtype, device=device)
        zeros_b = torch.zeros(rank, real[0][1].shape[1], dtype=dtype, device=device)
        self.A = torch.stack([_pad(w[0], zeros_a) if w else zeros_a for w in weights])  # (N, R, in | V)
        self.Bs = torch.stack([_pad(w[1], zeros_b) if w else zeros_b for w in weights])  # (N, R, out)
        self.mask = None  # a missing adapter (zero weights) keeps every rank: its h is 0, so is its g
        if any(w is not None and w[0].shape[0] < rank for w in weights):
            self.mask = torch.zeros(len(slots), 1, rank, dtype=dtype, device=device)  # (N, 1, R)
            for k, w in enumerate(weights):
                if w is not None:
                    self.mask[k, :, w[0].shape[0] :] = float("-inf")
        self.settings = shared.setdefault(tuple(settings), tuple(settings))  # equal layers share one tuple
        self.one = {  # slot -> (A, s·Bᵀ, ρ, f): the single-adapter path
            k: (w[0], w[1], settings[k][0], activation_fn(*settings[k][1:]))
            for k, w in enumerate(weights)
            if w
        }
        if self.embedding:
            self.vocab = self.A.shape[2]  # V
            self.table = self.A.transpose(1, 2).reshape(-1, rank)  # (N·V, R): row k·V + id is adapter k's h

    def _weights(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        scaling = layer.scaling[name]
        if self.embedding:
            a = layer.lora_embedding_A[name].detach().clone()  # (r, V)
            b = layer.lora_embedding_B[name].detach().T * scaling  # (r, dim)
            scale = layer._get_embed_scale()
            if scale is not None:
                b = b * scale.to(b.dtype)
            return a, b.contiguous()
        a = layer.lora_A[name].weight.detach().clone()  # (r, in)
        b = (layer.lora_B[name].weight.detach() * scaling).T.contiguous()  # (r, out)
        return a, b

    def uniform(self, slot: int, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """Every row through adapter ``slot``: ``result + g · s·Bᵀ`` with ``g`` the adapter's gate of ``h``."""
        entry = self.one.get(slot)
        if entry is None:
            return result
        a, bs, rho, fn = entry
        if self.embedding:
            h = F.embedding(x, a.T)  # (*, r)
            g = h if rho == 0 else fn(subtract_threshold(h, rho)[0])
            return result + (g @ bs).to(result.dtype)
        x2 = x.reshape(-1, x.shape[-1]).to(a.dtype)  # (T, in)
        h = (a @ x2.T).T  # (T, r): the skinny product as fast.py computes it
        g = h if rho == 0 else fn(subtract_threshold(h, rho)[0])
        out = torch.addmm(result.reshape(-1, result.shape[-1]).to(g.dtype), g, bs)  # (T, out)
        return out.view(result.shape).to(result.dtype)

    def grouped(self, route: Route, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """Rows of several adapters: one batched product with A, each group's gate, one with s·Bᵀ."""
        full = route.all_slots
        A = self.A if full else self.A.index_select(0, route.slots)  # (K, R, in | V)
        Bs = self.Bs if full else self.Bs.index_select(0, route.slots)  # (K, R, out)
        mask = self.mask if self.mask is None or full else self.mask.index_select(0, route.slots)  # (K, 1, R)
        K = route.groups
        if self.embedding:
            ids = x if route.in_order else x.index_select(0, route.gather)  # (K·C, T)
            h = F.embedding(ids + route.offsets(self.vocab), self.table).view(
                K, -1, A.shape[1]
            )  # (K, C·T, R)
        else:
            xg = (x if route.in_order else x.index_select(0, route.gather)).to(self.dtype)  # (K·C, T, in)
            # (K, C·T, R) computed as (A · xᵀ)ᵀ: the same product, faster on CPU for a skinny A (see fast.py)
            h = torch.bmm(A, xg.view(K, -1, x.shape[-1]).transpose(1, 2)).transpose(1, 2)
        g = route.gate(self.settings, A)(h, mask)
        delta = torch.bmm(g, Bs).view(-1, *result.shape[1:])  # (K·C, T, out)
        if route.pick is not None:
            delta = delta.index_select(0, route.pick)  # the real rows only
        if route.in_order:
            return result.add_(delta.to(result.dtype))
        return result.index_add_(0, route.rows, delta.to(result.dtype))


def _pad(t: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """``t`` (r, d) padded with zero rows to ``zeros``' shape (R, d)."""
    if t.shape[0] == zeros.shape[0]:
        return t
    out = zeros.clone()
    out[: t.shape[0]] = t
    return out


# --------------------------------------------------------------------------------------- a forward pass's rows


class Route:
    """Which prepared slot each row of one forward pass uses, grouped once for every layer."""

    def __init__(self, slots: dict[str, int], names: Sequence[str], device: torch.device) -> None:
        self.batch = len(names)
        index = [slots[name] if name != BASE else -1 for name in names]
        used = sorted({k for k in index if k >= 0})
        self.uniform = used[0] if len(used) == 1 and -1 not in index else None
        self.base_only = not used
        self.groups = len(used)
        self._gates: dict[int, GroupGate] = {}
        if self.uniform is not None or self.base_only:
            return
        members = [[row for row, k in enumerate(index) if k == slot] for slot in used]
        width = max(map(len, members))  # C
        gather, pick = [], []
        for group, rows in enumerate(members):
            pick += [group * width + j for j in range(len(rows))]
            gather += rows + [rows[0]] * (width - len(rows))  # short groups repeat their first row
        rows = [row for group in members for row in group]
        self.width = width
        self.all_slots = used == list(range(len(slots)))
        self.slots = torch.tensor(used, device=device)
        self.gather = torch.tensor(gather, device=device)
        self.rows = torch.tensor(rows, device=device)
        self.pick = None if len(pick) == len(gather) else torch.tensor(pick, device=device)
        # rows already grouped by adapter, in equal groups, no base rows: no gathering, no scattering
        self.in_order = gather == list(range(self.batch))
        self.used = used
        self._offsets: dict[int, torch.Tensor] = {}

    def offsets(self, vocab: int) -> torch.Tensor:
        """(K·C, 1): each gathered row's first entry in an embedding table stacked as (N·V, R)."""
        if vocab not in self._offsets:
            self._offsets[vocab] = (self.slots * vocab).repeat_interleave(self.width)[:, None]
        return self._offsets[vocab]

    def gate(self, settings: tuple[GateSetting, ...], like: torch.Tensor) -> GroupGate:
        key = id(settings)  # equal settings share one tuple (see LayerStack), so layers share the gate
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = GroupGate([settings[k] for k in self.used], like.device, like.dtype)
        return gate


# --------------------------------------------------------------------------------------- the model


def _tuner_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = []
    for module in model.modules():
        if isinstance(module, AuxiliaryTrainingWrapper):  # modules_to_save, trainable tokens
            raise NotPreparableError(f"{type(module).__name__} layers are routed by PEFT only")
        if isinstance(module, BaseTunerLayer):
            layers.append(module)
    return layers


def _check(layer: nn.Module, slots: Sequence[str]) -> None:
    from peft.tuners.lora import Embedding, Linear

    from ina.core.layer import InAEmbeddingVariant, InALinearVariant

    name = type(layer).__name__
    if type(layer) is not Linear and not isinstance(layer, Embedding):
        raise NotPreparableError(f"layer type {name} is computed by PEFT only")
    if layer.merged_adapters:
        raise NotPreparableError(f"{name} has merged adapters")
    for adapter in slots:
        variant = layer.lora_variant.get(adapter)
        if variant is not None and type(variant) not in (InALinearVariant, InAEmbeddingVariant):
            raise NotPreparableError(f"adapter {adapter!r} uses the LoRA variant {type(variant).__name__}")
        if isinstance(layer, Embedding):
            if adapter in layer.lora_embedding_A and (
                layer.input_fns.get(adapter) or layer.output_fns.get(adapter)
            ):
                raise NotPreparableError(f"adapter {adapter!r} has tensor-parallel hooks on {name}")
            if layer.get_base_layer().max_norm is not None:
                raise NotPreparableError("an embedding with max_norm renormalises its weights when read")
        elif adapter in layer.lora_A:
            lora_A, lora_B = layer.lora_A[adapter], layer.lora_B[adapter]
            if type(lora_A) is not nn.Linear or type(lora_B) is not nn.Linear:
                raise NotPreparableError(f"adapter {adapter!r} is not made of plain nn.Linear matrices")
            if lora_A.bias is not None or lora_B.bias is not None:
                raise NotPreparableError(f"adapter {adapter!r} has a LoRA bias (lora_bias)")


class PreparedAdapters:
    """A model's adapters, stacked once for inference; :meth:`route` runs a forward pass through them."""

    def __init__(self, model: nn.Module, adapters: Sequence[str]) -> None:
        self.model = model
        self.adapters = list(adapters)
        self.slots = {name: k for k, name in enumerate(self.adapters)}
        self.layers = _tuner_layers(model)
        for layer in self.layers:
            _check(layer, self.adapters)
        self.stacks: list[LayerStack] = []
        self.refresh()

    def refresh(self) -> None:
        """Stack the adapters' current weights again (after training or loading new weights into them)."""
        shared: dict[Any, Any] = {}
        with torch.no_grad():
            self.stacks = [LayerStack(layer, self.adapters, shared) for layer in self.layers]
        filled = [stack for stack in self.stacks if not stack.empty]
        self.device = filled[0].A.device if filled else torch.device("cpu")
        self.install()

    def install(self) -> None:
        """Give every adapted layer the routed forward (PEFT's own outside a route); done by construction."""
        for layer, stack in zip(self.layers, self.stacks, strict=True):
            layer.forward = _routed_forward(stack, type(layer).forward.__get__(layer))

    def close(self) -> None:
        """Give every layer its own forward back (:meth:`install` routes them again)."""
        for layer in self.layers:
            layer.__dict__.pop("forward", None)

    @contextlib.contextmanager
    def route(self, adapter_names: str | Sequence[str]) -> Iterator[None]:
        """Run the block's forward passes with row ``i`` through ``adapter_names[i]`` (``"__base__"``: the base).

        A single name routes every row through that adapter (decoding with one adapter). Refused with
        gradients enabled or in training mode (the stacks are copies, and no dropout is applied).
        """
        if torch.is_grad_enabled() or any(layer.training for layer in self.layers):
            raise RuntimeError(
                "PreparedAdapters.route is inference only: run it under torch.inference_mode() or "
                "torch.no_grad() with the model in eval mode (PEFT's own forward trains)"
            )
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = sorted({n for n in names if n != BASE and n not in self.slots})
        if unknown:
            raise KeyError(f"adapters {unknown} were not prepared; prepared: {self.adapters}")
        route = Route(self.slots, names, self.device)
        if isinstance(adapter_names, str):
            route.batch = -1  # every row, whatever the batch size
        previous = getattr(_state, "route", None)
        _state.route = route
        try:
            yield
        finally:
            _state.route = previous


def _routed_forward(stack: LayerStack, original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The layer's forward: PEFT's own outside a route, the prepared path inside one."""
    base = stack.layer.base_layer

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        route = getattr(_state, "route", None)
        if route is None or kwargs:
            return original(x, *args, **kwargs)
        result = base(x, *args)
        if route.base_only or stack.empty:
            return result
        if route.uniform is not None:
            return stack.uniform(route.uniform, x, result)
        if x.shape[0] != route.batch:
            raise ValueError(f"routed {route.batch} rows, but a layer got a batch of {x.shape[0]}")
        return stack.grouped(route, x, result)

    return forward


def prepare(model: nn.Module, adapters: Sequence[str] | None = None) -> PreparedAdapters:
    """Stack ``adapters`` (default: every adapter of the PEFT model) of every adapted layer, once.

    Raises :class:`NotPreparableError` for layers or adapters only PEFT computes (DoRA and other LoRA
    variants, LoRA biases, convolutions, ``modules_to_save``, merged adapters, quantised LoRA layers).
    """
    if adapters is None:
        adapters = list(getattr(model, "peft_config", {}))
    if not adapters:
        raise NotPreparableError("the model has no adapters")
    return PreparedAdapters(model, adapters)
