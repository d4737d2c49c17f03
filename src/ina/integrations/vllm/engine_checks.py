"""What vLLM's engine must be, and which layers an InA adapter may adapt, for the gate to be exact.

Checked when an InA adapter loads into the worker (never when a request runs); a problem is one
:class:`~ina.integrations.vllm.adapters.InAUnsupportedError` line.

- Layers: vLLM's unsharded linear LoRA layers (:data:`GATED_LAYERS`). Embeddings, the logits head,
  MoE experts, classification heads and the fully sharded (S-LoRA) layers are refused.
- Tensor parallelism: a column-parallel layer keeps A whole on every device (vLLM slices B's
  outputs only), so each device's shrink buffer holds the full h and the max is exact. A row-parallel
  layer slices A along its input: each device holds a partial sum of h, and the max of a partial sum
  is not the max of h, so InA on a row-parallel layer (o_proj, down_proj) is refused when
  ``tensor_parallel_size > 1``. ``fully_sharded_loras`` slices A's rank axis itself: refused.
- Quantised base layers: refused (the plugin was held to PEFT on float weights only).
- Eager execution: the gate runs in Python between two punica calls, per step, so a captured CUDA
  graph or a compiled graph would replay a stale gate. vLLM's CPU backend always runs LoRA eagerly;
  on a GPU, start vLLM with ``--enforce-eager``. ``VLLM_LORA_ENABLE_DUAL_STREAM`` runs LoRA through
  a fused op: refused.
"""

from __future__ import annotations

from typing import Any

from vllm import envs
from vllm.config import CompilationMode, CUDAGraphMode
from vllm.lora.layers import (
    ColumnParallelLinearWithLoRA,
    MergedColumnParallelLinearWithLoRA,
    MergedQKVParallelLinearWithLoRA,
    QKVParallelLinearWithLoRA,
    ReplicatedLinearWithLoRA,
    RowParallelLinearWithLoRA,
)
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.platforms import current_platform

from .adapters import AdapterGate, InAUnsupportedError
from .gate import SlotGate

# exact types: the sharded (S-LoRA) and variable-slice subclasses compute their own way
GATED_LAYERS: tuple[type, ...] = (
    ColumnParallelLinearWithLoRA,
    MergedColumnParallelLinearWithLoRA,
    QKVParallelLinearWithLoRA,
    MergedQKVParallelLinearWithLoRA,
    RowParallelLinearWithLoRA,
    ReplicatedLinearWithLoRA,
)


def is_eager(vllm_config: Any) -> bool:
    """Whether the model runs eagerly: no compiled graph and no CUDA graph that would freeze the gate."""
    compilation = vllm_config.compilation_config
    if compilation.mode != CompilationMode.NONE:
        return False
    return current_platform.is_cpu() or compilation.cudagraph_mode == CUDAGraphMode.NONE


def _refuse(name: str, rule: str, value: object, fix: str) -> InAUnsupportedError:
    return InAUnsupportedError(f"InA adapter {name!r}: {rule}; got {value}. {fix}")


def check_engine(manager: Any, adapter: str) -> None:
    """Refuse engine settings under which no InA adapter can be gated exactly."""
    if manager.lora_config.fully_sharded_loras:
        raise _refuse(
            adapter,
            "fully sharded LoRA slices the rank axis that InA takes its max over",
            "fully_sharded_loras=True",
            "Start vLLM without --fully-sharded-loras.",
        )
    if not (current_platform.is_cpu() or current_platform.is_cuda()):
        raise _refuse(
            adapter, "InA runs on vLLM's CPU and CUDA backends only", type(current_platform).__name__, ""
        )
    if envs.VLLM_LORA_ENABLE_DUAL_STREAM:
        raise _refuse(
            adapter,
            "the dual-stream LoRA path runs shrink and expand in one op, with no room for the gate",
            "VLLM_LORA_ENABLE_DUAL_STREAM=1",
            "Unset VLLM_LORA_ENABLE_DUAL_STREAM.",
        )
    if not getattr(manager, "ina_eager", False):
        raise _refuse(
            adapter,
            "InA's gate runs eagerly between vLLM's LoRA kernels; compiled or CUDA graphs would replay it stale",
            "a compiled model",
            "Start vLLM with --enforce-eager (LLM(..., enforce_eager=True)).",
        )


def layer_gates(manager: Any, lora_model: Any, gate: AdapterGate, adapter: str) -> dict[str, SlotGate]:
    """``{vLLM module name: SlotGate}`` for every layer the (packed) adapter adapts, or a refusal."""
    check_engine(manager, adapter)
    gates: dict[str, SlotGate] = {}
    for module_name, module in manager.modules.items():
        weights = manager._get_lora_layer_weights(lora_model, module_name)
        if not weights:
            continue
        kind = type(module).__name__
        if type(module) not in GATED_LAYERS:
            raise _refuse(
                adapter,
                f"InA in vLLM gates {', '.join(t.__name__ for t in GATED_LAYERS)} only",
                f"{kind} for {module_name}",
                "Leave that module out of target_modules, or serve the adapter with `ina serve`.",
            )
        if isinstance(module, RowParallelLinearWithLoRA) and module.tp_size > 1:
            raise _refuse(
                adapter,
                "a row-parallel layer splits A by input, so each device holds a partial sum of h, whose max "
                "is not h's",
                f"{module_name} with tensor_parallel_size={module.tp_size}",
                "Serve InA with --tensor-parallel-size 1 (or pipeline parallelism).",
            )
        method = getattr(module.base_layer, "quant_method", None)
        if method is not None and type(method) is not UnquantizedLinearMethod:
            raise _refuse(
                adapter,
                "InA in vLLM runs on unquantised base weights only",
                f"{type(method).__name__} on {module_name}",
                "Serve an unquantised base (no --quantization).",
            )
        a = weights.lora_a
        ranks = (
            tuple(0 if t is None else int(t.shape[0]) for t in a)
            if isinstance(a, list)
            else (int(a.shape[0]),)
        )
        if len(ranks) != module.n_slices:
            raise _refuse(
                adapter,
                "each slice of a packed layer needs its own A",
                f"{len(ranks)} A matrices for the {module.n_slices} slices of {module_name}",
                "Serve the adapter with `ina serve`.",
            )
        gates[module_name] = SlotGate(gate, ranks)
    return gates
