"""Loading what the engine serves: a base model, its tokenizer, adapters and their prompt templates."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from torch import nn

from ina.foundation.prompts import PromptTemplate


@dataclasses.dataclass
class Loaded:
    """A model with its adapters attached, on its device, ready for :class:`~ina.serve.engine.Engine`."""

    model: nn.Module
    tokenizer: Any
    base_model_id: str
    prompt_templates: dict[str, PromptTemplate]


def load(
    base_model: str | PathLike[str],
    adapters: Mapping[str, str | PathLike[str]] | None = None,
    base_model_id: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
) -> Loaded:
    """Load ``base_model`` and its tokenizer, then each adapter folder in ``adapters`` under its name.

    Adapters may be InA, the authors' LoRA+inhibition format or plain LoRA (`ina.foundation.models.load_with_adapters`);
    an adapter's ``ina_prompt.json`` says which prompt template it was trained with. ``dtype`` "auto"
    follows `ina.foundation.models.resolve_dtype` (float32 on CPU).
    """
    from ina.foundation.models import load_with_adapters

    name = str(base_model)
    adapters = adapters or {}
    # the engine pads with its own id: the tokenizer stays as saved
    model, tokenizer = load_with_adapters(name, adapters, dtype=dtype, device=device, pad=False)
    templates = {}
    for adapter, path in adapters.items():
        template = PromptTemplate.from_adapter(path)
        if template is not None:
            templates[adapter] = template
    model_id = base_model_id or Path(name.rstrip("/")).name or "base"
    return Loaded(model, tokenizer, model_id, templates)
