"""Attention maps of the unmerged model, averaged over heads: numbers only, no drawing.

The authors' figures were computed on merged models, which for ρ > 0 is a different model; here the
adapter runs unmerged, through InA's real forward pass, with eager attention so that the softmax
weights exist. :func:`compute_attention` returns plain JSON-able data that the CLI draws and the
server returns from ``POST /v1/attention``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ina.foundation.errors import UsageError

BASE = "__base__"  # PEFT's name for "no adapter" in mixed-adapter batches
DEFAULT_LAYERS: tuple[int, ...] = (1, 2, 3, 4, -4, -3, -2, -1)


class AttentionUnavailableError(RuntimeError):
    """Raised when the model cannot return its attention weights."""


def num_layers(model: nn.Module) -> int | None:
    """The number of transformer layers from the model's config, or None when the config does not say."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_layers(layers: Sequence[int] | None, total: int) -> list[int]:
    """Layer numbers counted from 1 (``-1`` is the last layer), deduplicated in order of first appearance.

    ``None`` gives the first four and last four layers (every layer of a model with at most eight).
    Raises `UsageError` (a ``ValueError``) naming the rule and the value for 0 or a number outside ``[-total, total]``.
    """
    if layers is None:  # the first four and the last four, overlapping on shallow models
        return sorted(
            {n for n in DEFAULT_LAYERS if 0 < n <= total}
            | {total + 1 + n for n in DEFAULT_LAYERS if -total <= n < 0}
        )
    requested = list(layers)
    if not requested:
        raise UsageError("`layers` must name at least one layer; got an empty list")
    resolved: list[int] = []
    for layer in requested:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise UsageError(f"`layers` must be integers; got {layer!r}")
        if layer == 0 or not -total <= layer <= total:
            raise UsageError(
                f"`layers`: layer {layer} is out of range: this model has {total} layers, numbered 1..{total} "
                f"from the first (or -1..-{total} from the last); 0 is not a layer"
            )
        number = layer if layer > 0 else total + 1 + layer
        if number not in resolved:
            resolved.append(number)
    return resolved


def context_length(model: nn.Module, tokenizer: Any) -> int | None:
    """The longest input the model takes: the smaller of its position table and the tokenizer's limit."""
    limits = []
    config = getattr(model, "config", None)
    if config is not None:
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        for key in ("max_position_embeddings", "n_positions", "seq_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                limits.append(value)
                break
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 10**7:
        limits.append(tokenizer_limit)
    return min(limits) if limits else None


def is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the block with eager attention (the only kind that returns weights), then restore the previous one."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
        return
    if not hasattr(model, "set_attn_implementation"):
        raise AttentionUnavailableError(
            f"this model uses attn_implementation={previous!r}, which does not return attention weights, and "
            "it cannot be switched at run time; load it with attn_implementation='eager'"
        )
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError, NotImplementedError) as error:
        raise AttentionUnavailableError(
            f"this model uses attn_implementation={previous!r}, which does not return attention weights, "
            f"and switching to 'eager' failed ({error}); load it with attn_implementation='eager'"
        ) from error
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def evaluation(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients for the block; the previous train/eval mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def encode(
    model: nn.Module, tokenizer: Any, text: str, text_pair: str | None, causal: bool
) -> tuple[dict, bool]:
    """Token ids of ``text`` (and ``text_pair``) cut to the model's context; returns (batch of one, truncated).

    Encoders get the tokenizer's pair template (``[CLS] a [SEP] b [SEP]`` for BERT); causal models read the
    pair as one text, joined by a space.
    """
    if not isinstance(text, str) or not text:
        raise UsageError(f"`text` must be a non-empty string; got {text!r}")
    if text_pair is not None and not isinstance(text_pair, str):
        raise UsageError(f"`text_pair` must be a string or None; got {text_pair!r}")
    if causal and text_pair:
        text, text_pair = f"{text} {text_pair}", None
    args = (text, text_pair) if text_pair else (text,)
    full = tokenizer(*args, truncation=False)
    limit = context_length(model, tokenizer)
    truncated = limit is not None and len(full["input_ids"]) > limit
    if truncated:
        encoded = tokenizer(*args, truncation=True, max_length=limit, return_tensors="pt")
    else:
        encoded = tokenizer(*args, return_tensors="pt")
    return dict(encoded), truncated


def looks_causal(model: nn.Module) -> bool:
    """Whether the model masks future tokens: decoders (LLaMA, GPT-2, BLOOM, ...) yes, BERT-style encoders no."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    # Every encoder has a masked-LM head; the decoders that also have one (BART-like) are encoder-decoders.
    return config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def forward_kwargs(
    model: nn.Module, adapter_name: str | None
) -> tuple[dict[str, Any], contextlib.AbstractContextManager]:
    """How to run ``model`` with adapter ``adapter_name`` (None: the base) without changing its active adapter."""
    if not is_peft_model(model):
        if adapter_name is not None:
            raise UsageError(
                f"`adapter_name` must be None for a model without adapters; got {adapter_name!r}. "
                "Load adapters with ina.load_adapter(model, path, adapter_name=...) first"
            )
        return {}, contextlib.nullcontext()
    if adapter_name is None or adapter_name == BASE:
        return {}, model.disable_adapter()
    available = list(model.peft_config)
    if adapter_name not in available:
        raise UsageError(
            f"`adapter_name` must be one of the loaded adapters {available}; got {adapter_name!r}"
        )
    # A mixed-adapter batch of one row runs exactly that adapter and leaves the active adapter alone.
    return {"adapter_names": [adapter_name]}, contextlib.nullcontext()


def run_with_attentions(
    model: nn.Module, encoded: dict[str, torch.Tensor], adapter_name: str | None
) -> tuple[torch.Tensor, ...]:
    """The per-layer attention weights ``(1, heads, T, T)`` of one forward pass of the unmerged model."""
    kwargs, context = forward_kwargs(model, adapter_name)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in encoded.items()}
    with evaluation(model), eager_attention(model), context:
        outputs = model(**inputs, **kwargs, output_attentions=True)
    attentions = getattr(outputs, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
        raise AttentionUnavailableError(
            f"the model returned no attention weights (attn_implementation={implementation!r}); load it with "
            "attn_implementation='eager', the only implementation that computes them"
        )
    return tuple(attentions)


def compute_attention(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    text_pair: str | None = None,
    layers: list[int] | None = None,
    adapter_name: str | None = None,
) -> dict:
    """Head-averaged attention of chosen layers for one text, from the unmerged model with eager attention.

    Args:
        model: a transformers model or a `PeftModel` holding InA/LoRA adapters (never merged here).
        tokenizer: its tokenizer.
        text: the input; ``text_pair`` a second segment (encoders: ``[CLS] text [SEP] text_pair [SEP]``;
            causal models: the two joined by a space).
        layers: layer numbers from 1 (``-1`` = last); None: the first four and last four.
        adapter_name: which loaded adapter to run; None runs the base model (adapters disabled).

    Returns:
        A JSON-able dict: ``tokens`` (the tokenizer's tokens), ``token_texts`` (each token decoded),
        ``layers`` (layer numbers from 1), ``attention`` (per layer, a T×T list of rows: row i is how
        token i attends to every token, averaged over heads; each row sums to 1), ``causal`` (future
        tokens masked), ``truncated`` (the text was cut to ``context_length`` tokens), ``adapter``,
        ``num_layers``, ``num_heads`` and ``context_length``.

    The attention implementation is switched to eager for the call and restored afterwards; the model's
    active adapter and train/eval mode are left as they were.
    """
    causal = looks_causal(model)
    encoded, truncated = encode(model, tokenizer, text, text_pair, causal)
    total = num_layers(model)
    if total is not None:
        resolve_layers(layers, total)  # fail before the forward pass
    attentions = run_with_attentions(model, encoded, adapter_name)
    total = len(attentions)
    chosen = resolve_layers(layers, total)
    ids = encoded["input_ids"][0].tolist()
    matrices = [attentions[layer - 1][0].float().mean(dim=0) for layer in chosen]  # each (T, T)
    return {
        "tokens": tokenizer.convert_ids_to_tokens(ids),
        "token_texts": [tokenizer.decode([i]) for i in ids],
        "layers": chosen,
        "attention": [m.cpu().tolist() for m in matrices],
        "causal": causal,
        "truncated": truncated,
        "adapter": adapter_name,
        "num_layers": total,
        "num_heads": int(attentions[0].shape[1]),
        "context_length": context_length(model, tokenizer),
    }
