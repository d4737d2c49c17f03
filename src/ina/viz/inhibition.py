"""What the inhibition gate does inside a model, measured with forward hooks: numbers only, no drawing.

For every adapted linear layer the hooks capture ``h = A·x`` (the rank-r activations; dropout is off in
eval mode), the base layer's output ``W0·x + b`` and the layer's output, and compute with the core's
:func:`ina.core.functional.subtract_threshold`: the threshold ``ρ · max_r(h)`` per token, the share of
rank units below it (those the activation ``f`` then squashes), and ``‖adapter output‖ / ‖base output‖``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ina.core.functional import subtract_threshold
from ina.foundation.attention import encode, evaluation, forward_kwargs, looks_causal
from ina.foundation.errors import UsageError


def adapted_modules(model: nn.Module, adapter_name: str) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every LoRA/InA layer holding ``adapter_name`` as a linear ``lora_A`` (embeddings excluded)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and adapter_name in module.lora_A
        and hasattr(module, "base_layer")
    ]


def short_name(name: str) -> str:
    """``base_model.model.bert.encoder.layer.3.attention.self.query`` → ``L4.query`` (layers counted from 1)."""
    numbers = re.findall(r"\.(\d+)\.", f".{name}.")
    last = name.rsplit(".", 1)[-1]
    return f"L{int(numbers[-1]) + 1}.{last}" if numbers else last


@contextlib.contextmanager
def capture(modules: Sequence[tuple[str, nn.Module]], adapter_name: str) -> Iterator[dict[str, dict]]:
    """Hooks recording, per module name, ``h`` (lora_A output), ``base`` (base layer output) and ``out``."""
    records: dict[str, dict] = {name: {} for name, _ in modules}
    handles = []

    def keep(name: str, key: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            # clone: PEFT adds the adapter output into the base layer's result in place
            records[name][key] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    for name, module in modules:
        handles.append(module.lora_A[adapter_name].register_forward_hook(keep(name, "h")))
        handles.append(module.base_layer.register_forward_hook(keep(name, "base")))
        handles.append(module.register_forward_hook(keep(name, "out")))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def gate_statistics(h: torch.Tensor, inhibition: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (share of rank units with ``h < ρ·max_r(h)``, ``max_r(h)``). ``h``: (T, r) → (T,), (T,).

    With ρ = 0 the gate is off (the adapter is LoRA), so no unit is inhibited: the share is 0.
    """
    if inhibition == 0:
        token_max = h.amax(dim=-1)  # (T,)
        return torch.zeros_like(token_max), token_max
    shifted, token_max = subtract_threshold(h, inhibition)  # (T, r), (T, 1)
    return (shifted < 0).float().mean(dim=-1), token_max.squeeze(-1)


Text = str | tuple[str, str]  # one text, or a pair (encoders: [CLS] a [SEP] b [SEP])


def _split(text: Text) -> tuple[str, str | None]:
    return (text[0], text[1]) if isinstance(text, tuple) else (text, None)


def compute_inhibition(model: nn.Module, tokenizer: Any, texts: Sequence[Text], adapter_name: str) -> dict:
    """Gate statistics of adapter ``adapter_name`` of a `PeftModel` over ``texts`` (one forward pass each).

    Returns a JSON-able dict: ``name``, ``settings`` (ρ, activation, r, ...), ``modules`` (per adapted
    layer: ``name``, ``module``, and over all tokens ``below_threshold``, ``token_max``, ``relative_norm``
    plus ``per_text`` lists of the same per token), ``truncated`` (indices of texts cut to the context).
    """
    from ina.viz.models import adapter_settings

    forward_kwargs(model, adapter_name)  # checks the name
    if adapter_name is None:
        raise UsageError("`adapter_name` must name a loaded adapter: the base model has no gate to measure")
    settings = adapter_settings(model, adapter_name)
    modules = adapted_modules(model, adapter_name)
    if not modules:
        raise UsageError(f"adapter {adapter_name!r} adapts no linear layer; nothing to measure")
    causal = looks_causal(model)
    device = next(model.parameters()).device
    per_module: dict[str, dict[str, list]] = {
        name: {"below_threshold": [], "token_max": [], "relative_norm": [], "per_text": []}
        for name, _ in modules
    }
    truncated = []
    for index, text in enumerate(texts):
        encoded, was_truncated = encode(model, tokenizer, *_split(text), causal)
        if was_truncated:
            truncated.append(index)
        inputs = {k: v.to(device) for k, v in encoded.items()}
        kwargs, context = forward_kwargs(model, adapter_name)
        with evaluation(model), context, capture(modules, adapter_name) as records:
            model(**inputs, **kwargs)
        for name, _ in modules:
            record = records[name]
            if "h" not in record:
                raise RuntimeError(f"{name}: the adapter {adapter_name!r} did not run in this layer")
            h = record["h"].float().reshape(-1, record["h"].shape[-1])  # (T, r)
            base = record["base"].float().reshape(h.shape[0], -1)  # (T, out)
            delta = record["out"].float().reshape(h.shape[0], -1) - base  # (T, out)
            share, token_max = gate_statistics(h, settings["inhibition"])
            relative = delta.norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-12)  # (T,)
            values = {"below_threshold": share, "token_max": token_max, "relative_norm": relative}
            per_module[name]["per_text"].append({k: v.cpu().tolist() for k, v in values.items()})
            for key, value in values.items():
                per_module[name][key].extend(value.cpu().tolist())
    return {
        "name": adapter_name,
        "settings": settings,
        "modules": [{"name": short_name(name), "module": name, **per_module[name]} for name, _ in modules],
        "truncated": truncated,
    }


def token_texts(tokenizer: Any, model: nn.Module, texts: Sequence[Text]) -> list[dict]:
    """The tokens of each text as the model sees them (same truncation as :func:`compute_inhibition`)."""
    causal = looks_causal(model)
    out = []
    for text in texts:
        first, pair = _split(text)
        ids = encode(model, tokenizer, first, pair, causal)[0]["input_ids"][0].tolist()
        contexts = [_context(tokenizer, ids, p) for p in range(len(ids))]
        out.append(
            {
                "text": first,
                "text_pair": pair,
                "tokens": tokenizer.convert_ids_to_tokens(ids),
                "token_texts": [tokenizer.decode([i]) for i in ids],
                "contexts": contexts,
            }
        )
    return out


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    q = torch.quantile(tensor, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    return {"mean": tensor.mean().item(), "p10": q[0], "median": q[1], "p90": q[2]}


def summarize(result: dict) -> dict:
    """Add ``summary`` (per adapter, all layers) and per-module ``summary`` (mean and quantiles) to ``result``,
    and ``most_inhibited``: per adapter, the tokens whose rank units fall below the threshold most often
    (averaged over the adapted layers)."""
    for adapter in result["adapters"]:
        for module in adapter["modules"]:
            module["summary"] = {
                key: _quantiles(module[key]) for key in ("below_threshold", "token_max", "relative_norm")
            }
        adapter["summary"] = {
            key: _quantiles([v for module in adapter["modules"] for v in module[key]])
            for key in ("below_threshold", "token_max", "relative_norm")
        }
        scored = []
        for t, text in enumerate(result["texts"]):
            for position, token in enumerate(text["token_texts"]):
                shares = [m["per_text"][t]["below_threshold"][position] for m in adapter["modules"]]
                scored.append(
                    {
                        "text_index": t,
                        "position": position,
                        "token": token,
                        "below_threshold": sum(shares) / len(shares),
                        "context": text["contexts"][position],
                    }
                )
        scored.sort(key=lambda item: -item["below_threshold"])
        # With ρ = 0 the gate is off: no token is inhibited, so there is nothing to rank.
        adapter["most_inhibited"] = scored[:15] if adapter["settings"]["inhibition"] > 0 else []
    return result


def _context(tokenizer: Any, ids: list[int], position: int, width: int = 4) -> str:
    """The token at ``position`` in brackets with up to ``width`` tokens either side, as text."""
    pieces = [
        tokenizer.decode(ids[max(0, position - width) : position]),
        tokenizer.decode(ids[position : position + 1]),
        tokenizer.decode(ids[position + 1 : position + 1 + width]),
    ]
    left, token, right = (piece.strip() for piece in pieces)
    return " ".join(part for part in (left, f"[{token}]", right) if part)
