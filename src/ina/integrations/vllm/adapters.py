"""Which adapter folders vLLM must gate, read and checked without vLLM (only ``ina.core``).

An adapter folder is InA when its ``adapter_config.json`` says ``"peft_type": "INA"``, or is the
authors' format (``"peft_type": "LORA"`` plus ``"lora_inhibition"``). Every such folder is checked
in full (:func:`ina.core.loading.check_adapter_folder`); one with ρ > 0 gets an :class:`AdapterGate`.
Plain LoRA folders, and InA with ρ = 0 (exactly LoRA), run vLLM's own LoRA path untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ina.core.layer import MARKER
from ina.core.loading import CONFIG_NAME, check_adapter_folder
from ina.core.registry import AUTHORS_KEY, PEFT_TYPE_NAME

# PEFT module names that vLLM serves through embedding or logits layers (never gated here)
EMBEDDING_NAMES: tuple[str, ...] = (
    "embed_tokens",
    "lm_head",
    "wte",
    "word_embeddings",
    "embed_in",
    "embed_out",
)


class InAUnsupportedError(ValueError):
    """An InA adapter, or an engine setting, that the plugin cannot compute exactly: one line, with the fix."""


@dataclass(frozen=True)
class AdapterGate:
    """One adapter's gate ``f(h − ρ·max_r h)``: its ρ, ``f`` and leaky_relu's slope."""

    inhibition: float
    activation: str
    negative_slope: float


def refusal(path: str | Path, rule: str, value: object, fix: str) -> InAUnsupportedError:
    return InAUnsupportedError(f"InA adapter {path}: {rule}; got {value}. {fix}")


def is_ina_folder(path: str | Path) -> bool:
    """Whether ``path`` holds an adapter in an InA format (ours or the authors'); False for plain LoRA.

    A folder whose config cannot be read counts as InA, so that :func:`adapter_gate` reports it in one line.
    """
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        return False
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    if not isinstance(data, dict):
        return True
    return data.get("peft_type") == PEFT_TYPE_NAME or (
        data.get("peft_type") == "LORA" and AUTHORS_KEY in data
    )


def adapter_gate(path: str | Path) -> AdapterGate | None:
    """The gate of the InA adapter in folder ``path``; None for plain LoRA and ρ = 0 (vLLM's LoRA path).

    Raises :class:`ina.core.loading.AdapterFileError` for a damaged or invalid folder and
    :class:`InAUnsupportedError` for what vLLM cannot gate (embeddings, ``modules_to_save``).
    """
    if not is_ina_folder(path):
        return None
    config = check_adapter_folder(path)
    if config.inhibition == 0:
        return None
    if config.modules_to_save:
        raise refusal(
            path,
            "`modules_to_save` must be empty for InA in vLLM (vLLM serves fully trained modules only as "
            "classification heads)",
            list(config.modules_to_save),
            "Serve this adapter with `ina serve`.",
        )
    embedded = sorted(
        name
        for name in _tensor_names(path)
        if "lora_embedding_" in name or _module_leaf(name) in EMBEDDING_NAMES
    )
    if embedded:
        raise refusal(
            path,
            "InA in vLLM gates linear layers only, not embeddings or the output head",
            f"the tensor {embedded[0]!r}",
            "Train without embed_tokens/lm_head in target_modules, or serve it with `ina serve`.",
        )
    return AdapterGate(float(config.inhibition), config.activation, float(config.negative_slope))


def without_markers(tensors: dict) -> dict:
    """``tensors`` less the ``ina_inhibition`` markers (their values are checked against the config first)."""
    return {name: tensor for name, tensor in tensors.items() if not name.endswith("." + MARKER)}


def _tensor_names(path: str | Path) -> list[str]:
    return list(adapter_tensors(path))


def _module_leaf(tensor_name: str) -> str:
    """``...layers.0.self_attn.q_proj`` of ``...q_proj.lora_A.weight``: the module's last name."""
    parts = [p for p in tensor_name.split(".") if p not in ("weight", "bias", "lora_A", "lora_B", MARKER)]
    return parts[-1] if parts else ""


def adapter_tensors(path: str | Path) -> dict:
    """Every tensor of the adapter in folder ``path`` (safetensors, else PEFT's .bin; never pickled code)."""
    file = Path(path) / "adapter_model.safetensors"
    if file.is_file():
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    import torch

    return torch.load(str(Path(path) / "adapter_model.bin"), map_location="cpu", weights_only=True)
