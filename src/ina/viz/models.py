"""Loading a base model and its adapters, unmerged and with eager attention, for the viz commands.

Names, devices, dtypes and file loading come from `ina.foundation.models`; adapter specs
(``--adapter NAME=PATH``) from `ina.foundation.adapters`. What is particular to viz: the head class
follows the adapters' ``task_type``, and an adapter whose tensors found no module is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ina.foundation.errors import UsageError


def _num_labels(adapter_dir: Path) -> int | None:
    """The number of labels of a classification head saved with the adapter (``modules_to_save``), if any."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118  # safe_open has keys(), no __iter__
            if "lora_" in key:
                continue
            if key.endswith(("classifier.weight", "out_proj.weight", "score.weight")):
                return int(handle.get_slice(key).get_shape()[0])
    return None


def _auto_class(task_type: str | None) -> Any:
    import transformers

    return {
        "CAUSAL_LM": transformers.AutoModelForCausalLM,
        "SEQ_CLS": transformers.AutoModelForSequenceClassification,
        "TOKEN_CLS": transformers.AutoModelForTokenClassification,
        "QUESTION_ANS": transformers.AutoModelForQuestionAnswering,
    }.get(task_type or "", transformers.AutoModel)


def check_adapter_loaded(model: nn.Module, name: str, path: Path) -> None:
    """Raise when tensors of the adapter's file found no module: it was trained on another model or head."""
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        prefixes = {key.split(".lora_")[0] for key in handle.keys() if ".lora_" in key}  # noqa: SIM118
    modules = {
        module_name
        for module_name, module in model.named_modules()
        if name in getattr(module, "lora_A", {}) or name in getattr(module, "lora_embedding_A", {})
    }
    missing = sorted(prefixes - modules)
    if missing:
        raise UsageError(
            f"--adapter {name}={path}: {len(missing)} adapted module(s) of the file are not in the "
            f"loaded model (first: {missing[0]!r}); the adapter was trained on another base model or head. "
            f"Pass the --base_model it was trained on, with the head its adapter_config.json `task_type` names "
            f"(here {model.peft_config[name].task_type!r}; None loads the bare model)"
        )


def load_models(
    base_model: str,
    adapters: Mapping[str, Path],
    device: str = "auto",
    dtype: str = "float32",
) -> tuple[nn.Module, Any]:
    """The base model (eager attention, eval mode) with every adapter loaded unmerged, and its tokenizer.

    ``adapters`` maps names to folders (`ina.foundation.adapters.parse_adapter_specs`). The head class
    follows the adapters' ``task_type`` (causal LM, sequence classification, ...), so that the saved
    tensor names match; without adapters the bare model (`AutoModel`: the same attention).
    """
    from ina.core.loading import AdapterFileError, check_adapter_folder
    from ina.foundation.models import load_with_adapters, resolve_base_model

    configs = []
    for name, path in adapters.items():  # damaged folders are refused before any model is loaded
        try:
            configs.append(check_adapter_folder(path))
        except AdapterFileError as error:
            raise UsageError(f"--adapter {name}={path}: {error}") from error
    task_types = {str(c.task_type) if c.task_type else None for c in configs}
    if len(task_types) > 1:
        raise UsageError(
            f"--adapter: all adapters must share one task_type (one base model runs them all); got "
            f"{sorted(map(str, task_types))}"
        )
    task_type = next(iter(task_types)) if task_types else None
    kwargs: dict[str, Any] = {"attn_implementation": "eager"}
    if task_type == "SEQ_CLS":
        labels = next((n for n in map(_num_labels, adapters.values()) if n), None)
        if labels:
            kwargs["num_labels"] = labels
    # The head may be new (its load report would call it "MISSING"); the adapters' saved head replaces it.
    model, tokenizer = load_with_adapters(
        resolve_base_model(base_model), adapters, _auto_class(task_type), dtype, device, pad=False, **kwargs
    )
    for name, adapter_path in adapters.items():
        check_adapter_loaded(model, name, adapter_path)
    return model, tokenizer


def adapter_settings(model: nn.Module, name: str) -> dict[str, Any]:
    """The gate settings of loaded adapter ``name``: inhibition ρ, activation, negative slope, r, alpha."""
    config = model.peft_config[name]
    return {
        "inhibition": float(getattr(config, "inhibition", 0.0)),
        "activation": getattr(config, "activation", "identity"),
        "negative_slope": float(getattr(config, "negative_slope", 0.01)),
        "r": config.r,
        "lora_alpha": config.lora_alpha,
    }
