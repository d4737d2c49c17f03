"""The export as a llama.cpp LoRA adapter (GGUF), for llama-architecture bases (llama.cpp, Ollama).

What llama.cpp's adapter loader reads: ``general.type = "adapter"``, ``general.architecture`` equal to
the base's, ``adapter.type = "lora"`` and ``adapter.lora.alpha``; per adapted base tensor
``<gguf name>.weight.lora_a`` with the logical shape of PEFT's A (r × in) and ``.lora_b`` with that of
B (out × r), the scale being ``alpha / r``. Base tensor names follow the ``gguf`` package's name map.
llama.cpp stores the q and k projections with their rows reordered for its rotary layout (each head's
two rotary halves interleaved), so B of those layers gets the same row order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ina.foundation.errors import UsageError

FILE_NAME = "adapter.gguf"
_LAYER = re.compile(r"(?:^|\.)(model\.layers\.\d+\..+)$")


def check_llama(base_config: Any) -> None:
    """Refuse ``--format gguf`` for a base that is not a llama-architecture model."""
    if getattr(base_config, "model_type", None) != "llama":
        raise UsageError(
            "--format gguf writes llama.cpp adapters for llama-architecture bases only; the base model's "
            f"model_type is {getattr(base_config, 'model_type', None)!r}. Use the default --format peft"
        )


def rotary_row_order(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection (or of its LoRA B) in llama.cpp's order: per head, rotary halves interleaved."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def gguf_tensor_name(layer_name: str, n_blocks: int) -> str:
    """The llama.cpp name of the base tensor a PEFT layer adapts (``blk.3.attn_q``), or a `UsageError`."""
    import gguf

    match = _LAYER.search(layer_name)
    mapped = (
        gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks).get_name(match.group(1)) if match else None
    )
    if mapped is None:
        raise UsageError(
            f"--format gguf: llama.cpp has no tensor for the adapted layer {layer_name!r}; export adapters on "
            "the attention and MLP projections of the decoder layers"
        )
    return mapped


def write_gguf_lora(
    path: str | os.PathLike[str],
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    alpha: float,
    base_config: Any,
) -> int:
    """Write the LoRA ``factors`` (layer name → (A, B), float32) as a llama.cpp adapter; returns the tensor count.

    ``alpha`` is written as ``adapter.lora.alpha``; every layer must have the same rank r (scale alpha / r).
    """
    import gguf

    check_llama(base_config)
    n_blocks = int(base_config.num_hidden_layers)
    n_head = int(base_config.num_attention_heads)
    n_kv_head = int(getattr(base_config, "num_key_value_heads", None) or n_head)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    count = 0
    for layer_name, (A, B) in factors.items():
        name = gguf_tensor_name(layer_name, n_blocks)
        a = A.detach().to(torch.float32).cpu().numpy()
        b = B.detach().to(torch.float32).cpu().numpy()
        if name.endswith("attn_q"):
            b = rotary_row_order(b, n_head)
        elif name.endswith("attn_k"):
            b = rotary_row_order(b, n_kv_head)
        writer.add_tensor(f"{name}.weight.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{name}.weight.lora_b", np.ascontiguousarray(b))
        count += 2
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count
