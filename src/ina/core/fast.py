"""A fused InA adapter branch: the same function as the reference path, with less memory and fewer kernels.

The reference path (:class:`ina.core.layer.InALinearVariant` through PEFT's modules) computes::

    xd = dropout(x)                       # (*, in)  a full copy of x, plus a mask, kept for backward
    h  = xd · Aᵀ                          # (*, r)
    g  = inhibit(h, ρ, f)                 # (*, r)  amax, multiply, subtract, f: each keeps its inputs
    y  = result + s · (g · Bᵀ)            # (*, out) three full-size temporaries

:class:`InABranch` computes ``y`` in one autograd node. Its forward pass takes the gate from
:mod:`ina.core.functional` (``subtract_threshold``, then ``activation_fn``: :func:`~ina.core.functional.inhibit`'s
own steps); fused here are only the dropout, the B-projection with the scaling and the residual add (one
``addmm``), and the backward pass, written out because autograd would keep more. What it keeps, exactly:

* ``x`` — the layer's input, by reference (no copy, even when ``x`` is not contiguous), and ``A``, ``B``;
* three ``(*, r)`` tensors: ``g`` (for B's gradient), ``z = h − ρ·max_r h`` (for ``f'``; not with the
  identity) and the max's tie weights ``[h = max_r h] / #maxima`` — each ``r / in`` of the size of
  ``x``; with ``ρ = 0`` only ``h``. Nothing ``(*, in)``- or ``(*, out)``-sized is created for backward;
* with dropout, never the dropped copy of ``x`` (it exists only transiently, in forward and again in
  backward): either the boolean mask (1 byte per input element), or only an integer seed from which
  backward regenerates it. :func:`set_dropout_mask_policy` chooses: ``"auto"`` regenerates on CUDA
  (fast RNG, memory is what counts) and keeps the boolean mask elsewhere (CPU RNG is slow).

Skinny products are written as ``(A · xᵀ)ᵀ`` rather than ``x · Aᵀ``: the same GEMM, which CPU BLAS runs
about twice as fast for r ≪ in, and cuBLAS runs identically (a transpose flag).

Gradients follow :func:`ina.core.functional.inhibit` under autograd in convention: the gradient of the
max is split evenly between tied maxima (``amax``'s rule); ``leaky_relu``'s slope applies at 0.
``tests/core/test_fast_path.py`` holds outputs and gradients to ``ina_delta`` / ``inhibit``.

Dropout masks come from a private generator seeded from PyTorch's default CPU generator, so
``torch.manual_seed`` makes them reproducible; they are not the masks ``nn.Dropout`` would draw (same
distribution, different draws). :func:`dropout_mask` returns the mask for a seed, so tests compare
against the reference with the very same mask. Disable the fast path with ``INA_FAST_PATH=0`` or
:func:`set_enabled`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn.modules import module as _module_globals

from ina.core.functional import ACTIVATIONS, activation_fn, subtract_threshold

FAST_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_enabled: bool = os.environ.get("INA_FAST_PATH", "1").strip().lower() not in ("0", "false", "no", "off")
_generators = threading.local()
MASK_POLICIES: tuple[str, ...] = ("auto", "regenerate", "save")
_mask_policy: str = "auto"

# dL/dz from dL/df(z) for each activation of functional.ACTIVATIONS: the derivative functions autograd itself
# calls for F.leaky_relu and F.gelu (None: the identity, whose z need not be kept).
_ACTIVATION_BACKWARD: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None] = {
    "leaky_relu": lambda grad, z, slope: torch.ops.aten.leaky_relu_backward(grad, z, slope, False),
    "gelu": lambda grad, z, slope: torch.ops.aten.gelu_backward(grad, z),
    "identity": None,
}


def is_enabled() -> bool:
    """Whether InA layers use the fused path where it applies (default yes; ``INA_FAST_PATH=0`` turns it off)."""
    return _enabled


def set_enabled(enabled: bool) -> None:
    """Switch the fused path on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def enabled(value: bool) -> Iterator[None]:
    """Context manager: run the block with the fused path switched on (True) or off (False)."""
    previous = is_enabled()
    set_enabled(value)
    try:
        yield
    finally:
        set_enabled(previous)


def new_seed() -> int:
    """A dropout seed drawn from PyTorch's default CPU generator (so ``torch.manual_seed`` fixes it)."""
    return int(torch.empty((), dtype=torch.int64).random_())


def _generator(device: torch.device) -> torch.Generator:
    cache = getattr(_generators, "by_device", None)
    if cache is None:
        cache = _generators.by_device = {}
    generator = cache.get(device)
    if generator is None:
        generator = cache[device] = torch.Generator(device=device)
    return generator


def dropout_mask(
    seed: int, shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str
) -> torch.Tensor:
    """The boolean keep-mask :class:`InABranch` uses for ``seed``: True with probability ``1 - p``.

    :class:`InABranch` draws it for its input flattened to 2-D: pass ``shape = (T, in)``.
    """
    return _keep(seed, shape, p, torch.bool, device)


def _keep(
    seed: int, shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """The keep-mask as 0/1 in ``dtype`` (elementwise ops with a same-dtype mask are the fast ones)."""
    generator = _generator(torch.device(device))
    generator.manual_seed(seed)
    keep = torch.rand(shape, generator=generator, device=device).ge_(p)  # fp32 draws, whatever the dtype
    return keep if keep.dtype == dtype else keep.to(dtype)


def get_dropout_mask_policy() -> str:
    """How the fused path keeps dropout masks for backward: "auto", "regenerate" or "save"."""
    return _mask_policy


def set_dropout_mask_policy(policy: str) -> None:
    """``"regenerate"``: keep only a seed, redraw the mask in backward (no memory, a second RNG pass);
    ``"save"``: keep the boolean mask (1 byte per input element, one RNG pass); ``"auto"``: regenerate
    on CUDA, save elsewhere."""
    global _mask_policy
    if policy not in MASK_POLICIES:
        raise ValueError(f"dropout mask policy must be one of {list(MASK_POLICIES)}; got {policy!r}")
    _mask_policy = policy


def _keeps_mask(device: torch.device) -> bool:
    return _mask_policy == "save" or (_mask_policy == "auto" and device.type != "cuda")


def _project(lora_A: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``x2 · Aᵀ`` (T, r), computed as ``(A · x2ᵀ)ᵀ``: the same product, and on CPU about twice as fast for
    a skinny A (cuBLAS only flips a transpose flag)."""
    return (lora_A @ x2.T).T


def _forward(
    x: torch.Tensor,
    result: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    inhibition: float,
    activation: str,
    negative_slope: float,
    dropout: float,
    seed: int,
) -> tuple[Any, ...]:
    """The forward computation: (out, h, m, z, g, keep); m, z are None with ρ = 0, keep without dropout."""
    x2 = x.reshape(-1, x.shape[-1])  # (T, in), a view when x is contiguous
    keep = m = z = None
    if dropout > 0:
        keep = _keep(seed, x2.shape, dropout, x2.dtype, x2.device)  # (T, in), 0/1
        h = _project(lora_A, x2 * keep).mul_(1.0 / (1.0 - dropout))  # (T, r); the dropped copy is transient
    else:
        h = _project(lora_A, x2)  # (T, r)
    if inhibition == 0:
        g = h  # the gate is off: LoRA
    else:  # functional.inhibit's own steps, keeping what backward needs
        z, m = subtract_threshold(h, inhibition)  # (T, r): h − ρ·max_r h; (T, 1): max_r h
        g = activation_fn(activation, negative_slope)(z)  # (T, r)
    result2 = result.reshape(-1, result.shape[-1]).to(h.dtype)  # (T, out); widened like `result + delta`
    # written into a fresh tensor of the output's shape: returning a view of an intermediate from an
    # autograd.Function makes autograd track it as a view (as_strided replays, slow for one-token decoding)
    out = torch.empty(result.shape, dtype=h.dtype, device=h.device)  # (*, out)
    torch.addmm(result2, g, lora_B.T, alpha=scaling, out=out.view(-1, out.shape[-1]))
    return out, h, m, z, g, keep


class InABranch(torch.autograd.Function):
    """``result + s · B · inhibit(A · dropout(x))`` as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,  # (*, in)
        result: torch.Tensor,  # (*, out)
        lora_A: torch.Tensor,  # (r, in)
        lora_B: torch.Tensor,  # (out, r)
        scaling: float,
        inhibition: float,
        activation: str,
        negative_slope: float,
        dropout: float,
        seed: int,
        keep_for_backward: bool,
    ) -> torch.Tensor:
        out, h, m, z, g, keep = _forward(
            x, result, lora_A, lora_B, scaling, inhibition, activation, negative_slope, dropout, seed
        )
        ctx.settings = (scaling, inhibition, activation, negative_slope, dropout, seed)
        ctx.result_dtype = result.dtype
        if not keep_for_backward:
            return out
        if inhibition == 0:
            saved = (h, None, None)
        else:
            ties = (h == m).to(h.dtype)  # (T, r): 1 at each maximum
            ties = ties.div_(ties.sum(dim=-1, keepdim=True))  # amax's rule: the gradient splits evenly
            saved = (g, None if _ACTIVATION_BACKWARD[activation] is None else z, ties)
        mask = keep.bool() if keep is not None and _keeps_mask(x.device) else None  # 1 byte per element
        ctx.save_for_backward(x, lora_A, lora_B, *saved, mask)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, lora_A, lora_B, g, z, ties, keep = ctx.saved_tensors
        scaling, inhibition, activation, negative_slope, dropout, seed = ctx.settings
        need_x, need_result, need_A, need_B = ctx.needs_input_grad[:4]
        grad_out2 = grad_out.reshape(-1, grad_out.shape[-1])  # (T, out)
        grad_B = (g.T @ grad_out2).mul_(scaling).T if need_B else None  # (out, r)
        grad_x = grad_A = None
        if need_x or need_A:
            grad_z = (lora_B.T @ grad_out2.T).T  # (T, r): dL/dg / s
            if z is not None:  # with ρ > 0 and an activation other than the identity
                grad_z = _ACTIVATION_BACKWARD[activation](grad_z, z, negative_slope)
            grad_z = (
                grad_z.mul_(scaling) if grad_z.is_contiguous() else grad_z * scaling
            )  # dL/dz (dL/dh if ρ = 0)
            if ties is not None:  # dL/dh = dL/dz − ρ · ties · Σ_r dL/dz
                grad_h = torch.addcmul(grad_z, ties, grad_z.sum(dim=-1, keepdim=True), value=-inhibition)
            else:
                grad_h = grad_z
            x2 = x.reshape(-1, x.shape[-1])  # (T, in)
            if dropout > 0:
                if keep is None:
                    keep = _keep(seed, x2.shape, dropout, x2.dtype, x2.device)  # regenerated
                else:
                    keep = keep.to(x2.dtype)
                grad_h = grad_h * (1.0 / (1.0 - dropout))  # the dropout scale, applied on the small side
            if need_A:
                grad_A = grad_h.T @ (x2 * keep if keep is not None else x2)  # (r, in)
            if need_x:
                grad_x = grad_h @ lora_A  # (T, in)
                if keep is not None:
                    grad_x = grad_x.mul_(keep)
                grad_x = grad_x.view(x.shape)
        grad_result = grad_out.to(ctx.result_dtype) if need_result else None
        return grad_x, grad_result, grad_A, grad_B, None, None, None, None, None, None, None


def ina_branch(
    x: torch.Tensor,
    result: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    inhibition: float,
    activation: str = "leaky_relu",
    negative_slope: float = 0.01,
    dropout: float = 0.0,
    seed: int | None = None,
) -> torch.Tensor:
    """``result + s · B · f(h − ρ·max_r h)`` with ``h = A · dropout(x)``, fused (see :class:`InABranch`).

    Shapes: ``x`` (*, in), ``result`` (*, out), ``lora_A`` (r, in), ``lora_B`` (out, r); all of one
    floating dtype and device. ``dropout`` is the drop probability (applied only if > 0; pass 0 in eval
    mode); ``seed`` fixes its mask (see :func:`dropout_mask`), drawn with :func:`new_seed` when None.
    """
    activation_fn(activation, negative_slope)  # raises for an unknown activation, naming the choices
    if not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be in [0, 1); got {dropout!r}")
    if dropout > 0 and seed is None:
        seed = new_seed()
    return InABranch.apply(
        x,
        result,
        lora_A,
        lora_B,
        float(scaling),
        float(inhibition),
        activation,
        float(negative_slope),
        float(dropout),
        int(seed or 0),
        torch.is_grad_enabled() and (x.requires_grad or lora_A.requires_grad or lora_B.requires_grad),
    )


def supports(x: torch.Tensor, result: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor) -> bool:
    """Whether :func:`ina_branch` computes these tensors as the reference path would.

    ``x``, ``A`` and ``B`` share one floating dtype; ``result`` has it too or a narrower one (fp32 adapters
    on a bf16 base, PEFT's default), in which case the output is in the adapter's dtype, as ``result + delta``.
    """
    dtype = x.dtype
    return (
        dtype in FAST_DTYPES
        and result.dtype in FAST_DTYPES
        and torch.promote_types(result.dtype, dtype) == dtype
        and lora_A.dtype == dtype
        and lora_B.dtype == dtype
        and x.device == result.device == lora_A.device == lora_B.device
        and x.dim() >= 1
        and result.shape[:-1] == x.shape[:-1]
    )


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _hooked(*modules: Any) -> bool:
    if getattr(_module_globals, "_global_forward_hooks", None) or getattr(
        _module_globals, "_global_forward_pre_hooks", None
    ):
        return True
    return any(getattr(m, "_forward_hooks", None) or getattr(m, "_forward_pre_hooks", None) for m in modules)


def layer_forward(
    module: Any, active_adapter: str, x: torch.Tensor, result: torch.Tensor, gate: Any
) -> torch.Tensor | None:
    """The fused branch for one adapter of a PEFT LoRA layer, or None where only the reference applies.

    Falls back (returns None) when the fast path is switched off, under ``torch.compile`` (the compiler
    fuses the reference graph itself), when forward hooks are registered on A, B, the dropout or the gate
    (they expect those modules to be called), when A or B is not a bias-free ``nn.Linear``, when dropout is not
    ``nn.Identity`` / ``nn.Dropout``, or when the tensors' dtypes or devices differ. Under autocast the
    branch runs in the autocast dtype, as the reference's ``nn.Linear`` calls would.
    """
    if not _enabled or _is_compiling():
        return None
    # plain dict look-ups: nn.Module.__getattr__ costs about a microsecond a call, and decoding calls this
    # once per adapted layer per token
    modules = module._modules
    lora_A = modules["lora_A"]._modules.get(active_adapter)
    lora_B = modules["lora_B"]._modules.get(active_adapter)
    dropout = modules["lora_dropout"]._modules.get(active_adapter)
    if type(lora_A) is not torch.nn.Linear or type(lora_B) is not torch.nn.Linear:
        return None
    params_A, params_B = lora_A._parameters, lora_B._parameters
    if params_A.get("bias") is not None or params_B.get("bias") is not None:
        return None
    if _hooked(lora_A, lora_B, dropout, gate):  # hooks expect the reference path's module calls
        return None
    if type(dropout) is torch.nn.Identity:
        p = 0.0
    elif type(dropout) is torch.nn.Dropout:
        p = float(dropout.p) if dropout.training else 0.0
    else:
        return None
    weight_A, weight_B = params_A["weight"], params_B["weight"]
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight_A, weight_B = x.to(dtype), weight_A.to(dtype), weight_B.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return _fused_or_none(x, result, weight_A, weight_B, module.scaling[active_adapter], gate, p)
    return _fused_or_none(x, result, weight_A, weight_B, module.scaling[active_adapter], gate, p)


def _fused_or_none(
    x: torch.Tensor,
    result: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    gate: Any,
    p: float,
) -> torch.Tensor | None:
    if not supports(x, result, lora_A, lora_B) or gate.activation not in ACTIVATIONS:
        return None
    keep_for_backward = torch.is_grad_enabled() and (
        x.requires_grad or lora_A.requires_grad or lora_B.requires_grad
    )
    seed = new_seed() if p > 0 else 0
    settings = (float(scaling), gate.inhibition, gate.activation, gate.negative_slope, p, seed)
    if not keep_for_backward:  # inference: no autograd node at all
        return _forward(x, result, lora_A, lora_B, *settings)[0]
    return InABranch.apply(x, result, lora_A, lora_B, *settings, keep_for_backward)
