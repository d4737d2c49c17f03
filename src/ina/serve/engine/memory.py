"""How many tokens the engine may hold at once: the token budget, from the model's KV cache cost and free memory.

Every row in flight keeps keys and values for each of its tokens in every layer, so a row of ``P`` prompt
tokens that may generate ``M`` more holds at most ``P + M`` tokens of KV cache. The engine accepts requests
while the rows it holds (queued or running) stay within a budget of such tokens, so that memory stays bounded
whatever clients send. Without an explicit budget it is set once, at start-up, from the memory free then.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger("ina.serve")

# Of the memory free at start-up, the share the KV cache may take (the rest: activations, the allocator,
# other processes growing).
MEMORY_FRACTION = 0.5
# Bytes held per KV-cache token, as a multiple of the cache itself: a decode step concatenates each layer's
# cache into a new tensor before the old one is freed, and merging two batches copies both caches. Measured
# before chunked prefill: one 8k-token SmolLM2 prompt added 823 MB, 2.2 × its 373 MB of KV cache.
OVERHEAD = 2.0
FALLBACK_MEMORY = 4 * 2**30  # when free memory cannot be read


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes in every layer of a decoder with ``config``."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 1
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 1
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * element  # keys and values


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` now (None when the system does not say)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def token_budget(config: Any, dtype: torch.dtype, device: torch.device, free: int | None = None) -> int:
    """The default token budget: ``MEMORY_FRACTION`` of the free memory over ``OVERHEAD`` × KV bytes per token."""
    free = available_memory(device) if free is None else free
    if free is None:
        logger.warning("free memory unknown; sizing the token budget for %d GiB", FALLBACK_MEMORY // 2**30)
        free = FALLBACK_MEMORY
    per_token = kv_bytes_per_token(config, dtype) * OVERHEAD
    return max(1, int(free * MEMORY_FRACTION / per_token))
