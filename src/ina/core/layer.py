"""InA layers: PEFT's LoRA layers with the inhibition gate between A and B.

InA reuses PEFT's LoRA layers (their parameters, dropout, scaling, multi-adapter bookkeeping and
bitsandbytes wrappers) and plugs the gate into the one hook PEFT gives a LoRA variant: the forward
pass of each adapter. An adapter with ρ = 0 gets no variant at all, so it runs PEFT's own LoRA path.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Embedding, LoraLayer, LoraVariant
from torch import nn

from ina.core.functional import inhibit

# A scalar tensor ``<module>.ina_inhibition`` (value ρ) saved beside each gated module's lora_A/lora_B.
# PEFT loads it through InA's tuner; LoRA-only parsers (vLLM, llama.cpp) refuse the unknown name, so
# they cannot run an InA adapter as plain LoRA. (Names with base_layer, norm or lora_magnitude_vector
# take other paths in those parsers.)
MARKER = "ina_inhibition"
_A_SUFFIXES = (".lora_A.weight", ".lora_embedding_A")


class InhibitionGate(nn.Module):
    """One adapter's gate ``f(h − ρ·max_r h)``: its settings, applied through :func:`inhibit`.

    A parameter-free module, registered on each adapted layer (``layer.ina_gate[adapter]``) so that
    printing a model shows which layers are gated and how.
    """

    def __init__(self, inhibition: float, activation: str, negative_slope: float) -> None:
        super().__init__()
        self.inhibition = float(inhibition)
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return inhibit(h, self.inhibition, self.activation, self.negative_slope)

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f"inhibition={self.inhibition}, activation={self.activation!r}{slope}"


class MergeRefusedError(ValueError):
    """Raised when asked to merge an adapter whose branch is not linear in the input."""


def refuse_merge(adapter_name: str, gate: InhibitionGate) -> MergeRefusedError:
    return MergeRefusedError(
        f"cannot merge InA adapter {adapter_name!r}: with inhibition={gate.inhibition} > 0 the branch "
        f"s·B·f(h − ρ·max_r h) is not a linear map of the input, so no weight W0 + ΔW computes it. "
        "Keep the adapter unmerged (it runs on top of the frozen base), or train with inhibition=0 (LoRA) "
        "if you need a merged model. The model was left unchanged."
    )


class InALinearVariant(LoraVariant):
    """Gate for `nn.Linear`, transformers' `Conv1D` and bitsandbytes linear layers (inputs of any leading shape)."""

    def __init__(self, gate: InhibitionGate) -> None:
        self.gate = gate

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs: Any) -> None:
        """Nothing to create: the gate has no parameters."""

    def forward(
        self, module: LoraLayer, *, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        from ina.core.fast import layer_forward  # the fused path, where it applies (ina.core.fast)

        fused = layer_forward(module, active_adapter, x, result, self.gate)
        if fused is not None:
            return fused
        lora_A = module.lora_A[active_adapter]
        lora_B = module.lora_B[active_adapter]
        h = lora_A(module.lora_dropout[active_adapter](x))  # (*, r), computed once
        return result + lora_B(self.gate(h)) * module.scaling[active_adapter]  # (*, out)

    def merge_safe(self, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        raise refuse_merge(active_adapter, self.gate)

    def merge_unsafe(self, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        raise refuse_merge(active_adapter, self.gate)


class InAEmbeddingVariant(InALinearVariant):
    """Gate for `nn.Embedding`: ``h`` is the row of A's embedding table for each token id."""

    def forward(
        self, module: LoraLayer, *, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        embedding_A = module.lora_embedding_A[active_adapter].T  # (num_embeddings, r)
        embedding_B = module.lora_embedding_B[active_adapter].T  # (r, dim)
        input_fn = module.input_fns.get(active_adapter)
        output_fn = module.output_fns.get(active_adapter)
        h = module._embed(x, embedding_A, input_fn=input_fn, output_fn=output_fn)  # (*, r)
        delta = (self.gate(h) @ embedding_B) * module.scaling[active_adapter]  # (*, dim)
        embed_scale = module._get_embed_scale()
        if embed_scale is not None:
            delta = delta * embed_scale.to(delta.dtype)
        return result + delta


class InAEmbedding(Embedding):
    """PEFT's LoRA embedding whose mixed-adapter batches also go through each adapter's variant."""

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        for adapter in dict.fromkeys(adapter_names):
            if adapter == "__base__" or adapter not in self.lora_embedding_A:
                continue
            rows = [i for i, name in enumerate(adapter_names) if name == adapter]
            if adapter in self.lora_variant:
                variant = self.lora_variant[adapter]
                out = variant.forward(self, active_adapter=adapter, x=x[rows], result=result[rows])
                result[rows] = out.to(result.dtype)
            else:
                delta = (
                    self._embed(x[rows], self.lora_embedding_A[adapter].T) @ self.lora_embedding_B[adapter].T
                )
                embed_scale = self._get_embed_scale()
                delta = delta * self.scaling[adapter]
                if embed_scale is not None:
                    delta = delta * embed_scale.to(delta.dtype)
                result[rows] = (result[rows] + delta).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "ina." + nn.Module.__repr__(self)


def attach_gate(layer: LoraLayer, adapter_name: str, gate: InhibitionGate) -> None:
    """Give ``layer``'s adapter ``adapter_name`` the gate; with ρ = 0 the adapter stays plain LoRA."""
    detach_gate(layer, adapter_name)
    if gate.inhibition == 0:
        return
    if not hasattr(layer, "ina_gate"):
        layer.ina_gate = nn.ModuleDict()
    layer.ina_gate[adapter_name] = gate
    variant_cls = InAEmbeddingVariant if isinstance(layer, Embedding) else InALinearVariant
    layer.lora_variant[adapter_name] = variant_cls(gate)


def open_embedding_gate(layer: LoraLayer, adapter_name: str) -> None:
    """Initialise a gated embedding adapter with B zero (ΔW = 0) and every token's gate open, LoRA-sized.

    PEFT starts embeddings the other way round (A = 0, B ~ N(0, 1)). Under the gate, h = 0 sits in
    leaky_relu's negative branch, so A's gradient would be scaled by the slope (0.01): the adapter would
    barely learn. Here each token's row ``a`` of A (``r`` values) is drawn from N(0, 1), negated if its
    largest value is negative (so at least that unit passes the gate), and scaled so that the gate's output
    ``f(a − ρ·max_r a)`` has squared norm ``r``, the squared norm of a row of PEFT's random B. B's first step
    then moves each token's output as much as LoRA's first step on A does, from any draw and any ρ (exact
    for leaky_relu and identity, which commute with positive scaling; close for gelu).
    """
    gate = layer.ina_gate[adapter_name]
    table = layer.lora_embedding_A[adapter_name]  # (r, num_embeddings)
    with torch.no_grad():
        rows = torch.randn(table.shape[::-1], device=table.device)  # (num_embeddings, r)
        rows = torch.where(rows.amax(dim=-1, keepdim=True) < 0, -rows, rows)
        norms = torch.linalg.vector_norm(gate(rows), dim=-1, keepdim=True)  # (num_embeddings, 1)
        rows = rows * (rows.shape[-1] ** 0.5 / norms.clamp_min(torch.finfo(rows.dtype).tiny))
        table.copy_(rows.T)
    nn.init.zeros_(layer.lora_embedding_B[adapter_name])


def detach_gate(layer: LoraLayer, adapter_name: str) -> None:
    """Remove ``adapter_name``'s gate from ``layer`` (PEFT's own bookkeeping does not know about it)."""
    layer.lora_variant.pop(adapter_name, None)
    gates = getattr(layer, "ina_gate", None)
    if gates is not None and adapter_name in gates:
        del gates[adapter_name]


def marker_tensors(
    state_dict: dict[str, torch.Tensor], inhibition: float, adapter_name: str | None = None
) -> dict[str, torch.Tensor]:
    """``{<module>.ina_inhibition: ρ}`` beside each A factor of ``state_dict`` (none for ρ = 0).

    With ``adapter_name`` the keys are the model's (``...lora_A.<adapter>.weight``, and the marker gets
    the same ``.<adapter>`` suffix); without, they are a saved file's (``...lora_A.weight``).
    """
    if inhibition == 0:
        return {}
    tag = f".{adapter_name}" if adapter_name else ""
    suffixes = (f".lora_A{tag}.weight", f".lora_embedding_A{tag}")
    return {
        f"{key[: -len(suffix)]}.{MARKER}{tag}": torch.tensor(float(inhibition), dtype=torch.float32)
        for key in state_dict
        for suffix in suffixes
        if key.endswith(suffix)
    }


def marker_problem(tensors: dict[str, torch.Tensor], inhibition: float) -> str | None:
    """What is wrong with the ``ina_inhibition`` markers of saved ``tensors`` for a config with ρ = ``inhibition``.

    Folders without any marker (saved before markers existed, or with ρ = 0) have none.
    """
    markers = {k[: -len(MARKER) - 1]: t for k, t in tensors.items() if k.endswith("." + MARKER)}
    if not markers:
        return None
    expected = float(torch.tensor(float(inhibition), dtype=torch.float32))
    modules = {k[: -len(s)] for k in tensors for s in _A_SUFFIXES if k.endswith(s)}
    for module, value in sorted(markers.items()):
        if value.numel() != 1:
            return f"`{module}.{MARKER}` with shape {tuple(value.shape)} (a scalar expected)"
        saved = float(value.float())
        if saved != expected:
            return f"`{module}.{MARKER}` = {saved:.6g} but the config's inhibition is {inhibition:.6g}"
    missing = sorted(modules - markers.keys())
    if missing:
        return f"no `{MARKER}` beside {missing[0]!r} while {len(markers)} other module(s) have one"
    orphans = sorted(markers.keys() - modules)
    if orphans:
        return f"`{orphans[0]}.{MARKER}` beside no lora_A tensor"
    return None
