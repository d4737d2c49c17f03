"""`InAModel`: the PEFT tuner that puts InA layers into a model (PEFT's LoRA tuner plus the gate)."""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraModel
from peft.tuners.lora import layer as lora_layers
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ina.core.config import InAConfig
from ina.core.layer import (
    MARKER,
    InAEmbedding,
    InhibitionGate,
    MergeRefusedError,
    attach_gate,
    detach_gate,
    marker_problem,
    marker_tensors,
    open_embedding_gate,
    refuse_merge,
)

SUPPORTED_BASE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D, nn.Embedding)
SUPPORTED_NAMES = (
    "torch.nn.Linear (and bitsandbytes Linear8bitLt/Linear4bit), transformers Conv1D, torch.nn.Embedding"
)


class UnsupportedTargetError(TypeError):
    """Raised when a targeted module is not a layer type InA can gate."""


def _gated_layer_types() -> tuple[type[nn.Module], ...]:
    """PEFT layer classes whose forward runs the gate (their forward delegates to the adapter's variant)."""
    types: list[type[nn.Module]] = [lora_layers.Linear, InAEmbedding]
    try:
        from peft.tuners.lora import bnb

        types += [getattr(bnb, name) for name in ("Linear8bitLt", "Linear4bit") if hasattr(bnb, name)]
    except ImportError:  # bitsandbytes not installed
        pass
    return tuple(types)


class InAModel(LoraModel):
    """Creates an InA model from a pre-trained model (use it through `peft.get_peft_model`).

    Every targeted layer computes ``W0·x + b + s · B · f(h − ρ·max_r h)`` with ``h = A·dropout(x)``
    (Kang et al., *InA: Inhibition Adaption on pre-trained language models*, Neural Networks 2024).
    """

    prefix: str = "lora_"

    def _create_and_replace(
        self,
        lora_config: InAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, SUPPORTED_BASE_TYPES):
            raise UnsupportedTargetError(
                f"InA cannot adapt module {current_key!r} of type {type(base).__module__}.{type(base).__name__}; "
                f"supported types are {SUPPORTED_NAMES}. Remove it from `target_modules` "
                "(or list it in `exclude_modules`)."
            )
        super()._create_and_replace(
            lora_config, adapter_name, target, target_name, parent, current_key, **kwargs
        )
        layer = getattr(parent, target_name)
        if not isinstance(layer, _gated_layer_types()):
            raise UnsupportedTargetError(
                f"InA cannot gate module {current_key!r}: PEFT wrapped it as {type(layer).__name__}, whose "
                f"forward does not run adapter variants; supported types are {SUPPORTED_NAMES}."
            )
        gate = InhibitionGate(lora_config.inhibition, lora_config.activation, lora_config.negative_slope)
        attach_gate(layer, adapter_name, gate)
        if (
            isinstance(layer, InAEmbedding)
            and gate.inhibition > 0
            and lora_config.init_lora_weights is not False
        ):
            open_embedding_gate(layer, adapter_name)

    @staticmethod
    def _create_new_module(
        lora_config: InAConfig, adapter_name: str, target: nn.Module, **kwargs: Any
    ) -> nn.Module:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, nn.Embedding):
            kwargs.pop("fan_in_fan_out", None)
            return InAEmbedding(target, adapter_name, config=lora_config, **kwargs)
        return LoraModel._create_new_module(lora_config, adapter_name, target, **kwargs)

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: Any,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """PEFT's selection of the adapter's tensors plus an ``ina_inhibition`` marker per gated module (ρ > 0)."""
        selected = super()._get_adapter_state_dict(
            model, config, adapter_name, state_dict, unwanted_adapter_names
        )
        inhibition = config.inhibition if isinstance(config, InAConfig) else 0
        return {**selected, **marker_tensors(selected, inhibition, adapter_name)}

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: Any, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Check the saved ``ina_inhibition`` markers against ``config``, drop them, then PEFT's key mapping."""
        from ina.core.loading import AdapterFileError

        inhibition = config.inhibition if isinstance(config, InAConfig) else 0
        problem = marker_problem(state_dict, inhibition)
        if problem:
            raise AdapterFileError(
                f"adapter {adapter_name!r}: each `{MARKER}` tensor must equal the config's inhibition; got "
                f"{problem}. Use the adapter_config.json saved with these weights."
            )
        kept = {k: v for k, v in state_dict.items() if not k.endswith("." + MARKER)}
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, kept)

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter, its gates included."""
        super().delete_adapter(adapter_name)
        for module in self.model.modules():
            if isinstance(module, lora_layers.LoraLayer):
                detach_gate(module, adapter_name)

    def _refuse_nonlinear(self, adapter_names: list[str] | None) -> None:
        names = adapter_names if adapter_names is not None else list(self.active_adapters)
        for name in names:
            config = self.peft_config.get(name)
            if isinstance(config, InAConfig) and not config.is_linear:
                gate = InhibitionGate(config.inhibition, config.activation, config.negative_slope)
                raise refuse_merge(name, gate)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Merge adapters into W0; refused (model untouched) for any adapter with ρ > 0."""
        self._refuse_nonlinear(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            self._refuse_nonlinear(adapter_names)
        return super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )

    def add_weighted_adapter(self, adapters: list[str], *args: Any, **kwargs: Any) -> None:
        """Combine adapters by weight arithmetic; only defined for linear (ρ = 0) adapters."""
        for name in adapters:
            config = self.peft_config[name]
            if isinstance(config, InAConfig) and not config.is_linear:
                raise MergeRefusedError(
                    f"cannot combine adapter {name!r} by weight arithmetic: with inhibition="
                    f"{config.inhibition} > 0 its branch is not linear, so sums of its A and B matrices do "
                    "not sum its outputs. Use mixed-adapter batches (`adapter_names=`) instead."
                )
        super().add_weighted_adapter(adapters, *args, **kwargs)
