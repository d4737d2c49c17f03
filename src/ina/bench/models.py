"""The model a training benchmark runs on, its adapters' configuration, and how to name its device."""

from __future__ import annotations

import platform
from typing import Any

import torch
from torch import nn

from ina.bench.settings import PRESETS, TARGETS, BenchSettings
from ina.core.config import InAConfig
from ina.foundation.adapters import target_modules_for
from ina.foundation.models import load_pretrained


def build_model(settings: BenchSettings, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The causal LM to benchmark: a random-init preset, or a local model folder (offline)."""
    import transformers

    if settings.model is not None:
        model = load_pretrained(transformers.AutoModelForCausalLM, settings.model, "--model", dtype=dtype)
        return _with_targets(model.to(device), settings)
    config = transformers.LlamaConfig(
        **PRESETS[settings.preset or "tiny"],
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(settings.seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    return _with_targets(model.to(dtype), settings)


def _with_targets(model: nn.Module, settings: BenchSettings) -> nn.Module:
    """``model``, once ``--targets`` is known to name some of its linear layers (a `UsageError` otherwise)."""
    if settings.targets not in TARGETS:
        target_modules_for(model, settings.targets.split(","), flag="--targets")
    return model


def adapter_config(settings: BenchSettings, inhibition: float) -> Any:
    """The `InAConfig` of every adapted variant; ``inhibition=0`` is the plain LoRA variant."""
    return InAConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=TARGETS.get(settings.targets) or settings.targets.split(","),
        inhibition=inhibition,
        task_type="CAUSAL_LM",
    )


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
