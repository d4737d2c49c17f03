"""The patches, each the narrowest wrapper around one vLLM 0.32.0 function (listed in :data:`PATCHES`).

vLLM has no API for LoRA variants, so the plugin wraps these functions; docs/vllm.md says, for each,
what upstream change would make it unnecessary. Plain LoRA adapters (and InA with ρ = 0) pass every
wrapper straight to vLLM's own function.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import torch

from .adapters import AdapterGate, InAUnsupportedError, adapter_gate, adapter_tensors, without_markers
from .engine_checks import is_eager, layer_gates
from .gate import BASE, SlotGate, clear_base_rows, gate_buffer, rows_by_slot

logger = logging.getLogger("ina.integrations.vllm")

# (vLLM file, class.function, what the wrapper adds)
PATCHES: tuple[tuple[str, str, str], ...] = (
    ("vllm/lora/lora_model.py", "LoRAModel.from_local_checkpoint",
     "InA folders: checked in full, markers dropped, the gate attached to the LoRAModel"),
    ("vllm/lora/model_manager.py", "LoRAModelManager.__init__", "records whether the model runs eagerly"),
    ("vllm/lora/model_manager.py", "LoRAModelManager._create_merged_loras_inplace",
     "after packing: the engine and every adapted layer checked, each layer's ranks per slice recorded"),
    ("vllm/lora/model_manager.py", "LoRAModelManager.activate_adapter", "gives each layer the slot's gate"),
    ("vllm/lora/layers/base_linear.py", "BaseLinearLayerWithLoRA._apply_lora_to_output",
     "the gate between shrink and expand, for the rows of InA slots; on CPU, base rows kept at the base "
     "when the last slot is in use"),
    ("vllm/v1/engine/input_processor.py", "InputProcessor._validate_lora",
     "a request's InA folder checked before it reaches the engine (offline API)"),
    ("vllm/entrypoints/openai/models/serving.py", "OpenAIServingModels._check_load_lora_adapter_request",
     "the same check before /v1/load_lora_adapter and --lora-modules: a 400 instead of a 500"),
)  # fmt: skip

_originals: dict[str, Callable[..., Any]] = {}


def install() -> None:
    """Wrap the functions of :data:`PATCHES` (once per process; vLLM may register a plugin twice)."""
    if _originals:
        return
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.model_manager import LoRAModelManager
    from vllm.v1.engine.input_processor import InputProcessor

    _originals["from_local_checkpoint"] = LoRAModel.__dict__["from_local_checkpoint"].__func__
    LoRAModel.from_local_checkpoint = classmethod(_from_local_checkpoint)
    for name, replacement in (
        ("__init__", _manager_init),
        ("_create_merged_loras_inplace", _create_merged_loras_inplace),
        ("activate_adapter", _activate_adapter),
    ):
        _originals[name] = getattr(LoRAModelManager, name)
        setattr(LoRAModelManager, name, replacement)
    _originals["_apply_lora_to_output"] = BaseLinearLayerWithLoRA._apply_lora_to_output
    BaseLinearLayerWithLoRA._apply_lora_to_output = _apply_lora_to_output
    _originals["_validate_lora"] = InputProcessor._validate_lora
    InputProcessor._validate_lora = _validate_lora
    _originals["_check_load_lora_adapter_request"] = OpenAIServingModels._check_load_lora_adapter_request
    OpenAIServingModels._check_load_lora_adapter_request = _check_load_lora_adapter_request
    logger.info("ina: exact InA for vLLM's LoRA path installed (%d patches)", len(PATCHES))


# --------------------------------------------------------------------------------------- loading (worker)


def _from_local_checkpoint(cls: type, lora_dir: str, expected_lora_modules: set[str], peft_helper: Any, **kwargs: Any) -> Any:  # fmt: skip
    gate = adapter_gate(lora_dir)  # checks every InA folder, ρ = 0 included
    if gate is None:
        return _originals["from_local_checkpoint"](
            cls, lora_dir, expected_lora_modules, peft_helper, **kwargs
        )
    from vllm.lora.utils import get_lora_id

    tensors = without_markers(adapter_tensors(lora_dir))
    _check_expected_modules(lora_dir, tensors, expected_lora_modules, peft_helper, kwargs)
    lora_model_id = kwargs.get("lora_model_id")
    lora = cls.from_lora_tensors(
        lora_model_id=get_lora_id() if lora_model_id is None else lora_model_id,
        tensors=tensors,
        peft_helper=peft_helper,
        device=kwargs.get("device", "cuda"),
        dtype=kwargs.get("dtype"),
        model_vocab_size=kwargs.get("model_vocab_size"),
        weights_mapper=kwargs.get("weights_mapper"),
        skip_prefixes=kwargs.get("skip_prefixes"),
    )
    lora.ina_gate = gate
    lora.ina_path = lora_dir
    return lora


def _check_expected_modules(
    lora_dir: str, tensors: dict, expected: set[str], peft_helper: Any, kwargs: dict[str, Any]
) -> None:
    """vLLM's own check (``from_local_checkpoint``): every adapted module is one the model can adapt."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.utils import is_base_embedding_weights, parse_fine_tuned_lora_name

    skip = kwargs.get("skip_prefixes")
    unexpected = []
    for name in tensors:
        if is_base_embedding_weights(name) or "base_layer" in name:
            continue
        if skip and LoRAModel._should_skip_module(name, skip):
            continue
        module_name, _ = parse_fine_tuned_lora_name(name, kwargs.get("weights_mapper"))
        if ".experts" in module_name:
            raise InAUnsupportedError(
                f"InA adapter {lora_dir}: InA in vLLM gates linear layers only, not MoE experts; got "
                f"{module_name}. Serve it with `ina serve`."
            )
        base_name = module_name.rsplit(".", 1)[-1]
        if base_name not in expected and base_name not in (peft_helper.modules_to_save or ()):
            unexpected.append(module_name)
    if unexpected:
        raise ValueError(
            f"While loading {lora_dir}, expected target modules in {expected} but received {unexpected}. "
            "Please verify that the loaded LoRA module is correct"
        )


def _manager_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _originals["__init__"](self, *args, **kwargs)
    vllm_config = kwargs.get("vllm_config", args[-1] if args else None)
    self.ina_eager = vllm_config is not None and is_eager(vllm_config)


def _create_merged_loras_inplace(self: Any, lora_model: Any) -> None:
    _originals["_create_merged_loras_inplace"](self, lora_model)
    gate: AdapterGate | None = getattr(lora_model, "ina_gate", None)
    if gate is not None:  # before the adapter is registered: a refusal leaves the manager as it was
        lora_model.ina_layers = layer_gates(self, lora_model, gate, getattr(lora_model, "ina_path", "?"))


def _activate_adapter(self: Any, lora_id: int) -> bool:
    activated = _originals["activate_adapter"](self, lora_id)
    if activated:
        index = self.lora_index_to_id.index(lora_id)
        layers: dict[str, SlotGate] = (
            getattr(self._registered_adapters.get(lora_id), "ina_layers", None) or {}
        )
        for name, module in self.modules.items():
            gates = dict(module.__dict__.get("_ina_gates") or {})
            if name in layers:
                gates[index] = layers[name]
            else:
                gates.pop(index, None)
            module._ina_gates = gates or None  # replaced whole: a forward pass never sees half an update
        if index == len(self.lora_index_to_id) - 1 and _is_cpu():
            for punica in self.punica_wrapper_mapping.values():
                punica._ina_last_slot_used = True  # base rows would pick this slot up: see clear_base_rows
    return activated


def _is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


# --------------------------------------------------------------------------------------- the forward pass


def _step_rows(punica: Any) -> dict[int, torch.Tensor | None]:
    """:func:`rows_by_slot` of this step's ``token_lora_indices``, computed once per step for all layers."""
    indices = punica.token_lora_indices
    key = (punica._token_lora_indices._version, indices.shape[0])
    cached = punica.__dict__.get("_ina_rows")
    if cached is None or cached[0] != key:
        cached = punica._ina_rows = (key, rows_by_slot(indices))
    return cached[1]


def _apply_lora_to_output(self: Any, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    gates = self.__dict__.get("_ina_gates")
    punica = self.punica_wrapper
    fix_base = punica.__dict__.get("_ina_last_slot_used", False)
    if gates or fix_base:
        rows = _step_rows(punica)
        if (gates and any(slot in rows for slot in gates)) or (fix_base and BASE in rows and len(rows) > 1):
            return _gated_lora_output(self, x, output, rows, gates or {})
    return _originals["_apply_lora_to_output"](self, x, output)


def _gated_lora_output(
    self: Any, x: torch.Tensor, output: torch.Tensor, rows: Any, gates: Any
) -> torch.Tensor:
    """vLLM's ``add_lora_linear`` (the same buffer, shrink and expand) with the gate between the two, and
    base rows zeroed there (:func:`~ina.integrations.vllm.gate.clear_base_rows`)."""
    original_shape = output.shape if output.ndim == 3 else None
    if x.ndim == 3 and output.ndim == 3:  # the transformers backend's (1, T, d)
        output, x = output.flatten(0, 1), x.flatten(0, 1)
    punica = self.punica_wrapper
    rank = self.lora_b_stacked[0].size(-1)  # R = max_lora_rank
    buffer = torch.zeros((len(self.output_slices), x.size(0), rank), dtype=torch.float32, device=x.device)
    punica.add_shrink(buffer, x, self.lora_a_stacked, 1.0)  # (S, T, R): h of every token's slot
    gate_buffer(buffer, rows, gates)
    clear_base_rows(buffer, rows)
    punica.add_expand(output, buffer, self.lora_b_stacked, self.output_slices, add_inputs=True)
    return output if original_shape is None else output.reshape(original_shape)


# --------------------------------------------------------------------------------------- before the engine

_checked: dict[tuple, Exception | None] = {}


def front_check(lora_path: str) -> None:
    """Check a local InA folder in the serving process (cached per folder state); raises its one-line problem."""
    folder = Path(os.path.expanduser(lora_path)).absolute()
    if not folder.is_dir():
        return  # a hub id or a missing folder: vLLM's worker resolves and reports it
    key = (str(folder), *(_mtime(folder / name) for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")))  # fmt: skip
    if key not in _checked:
        try:
            adapter_gate(folder)
            _checked[key] = None
        except ValueError as error:
            _checked[key] = error
    problem = _checked[key]
    if problem is not None:
        raise problem


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _validate_lora(self: Any, lora_request: Any) -> None:
    _originals["_validate_lora"](self, lora_request)
    if lora_request is not None and lora_request.lora_path:
        front_check(lora_request.lora_path)


async def _check_load_lora_adapter_request(self: Any, request: Any) -> Any:
    error = await _originals["_check_load_lora_adapter_request"](self, request)
    if error is not None or not request.lora_path:
        return error
    try:
        front_check(request.lora_path)
    except ValueError as problem:
        from vllm.entrypoints.serve import create_error_response

        return create_error_response(
            message=str(problem), err_type="BadRequestError", status_code=HTTPStatus.BAD_REQUEST
        )
    return None
