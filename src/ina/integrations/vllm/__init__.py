"""Exact InA inside vLLM: a ``vllm.general_plugins`` plugin (see docs/vllm.md).

With ina installed in vLLM's environment, ``vllm serve BASE --enable-lora --lora-modules NAME=FOLDER``
and ``LLM(..., enable_lora=True)`` with a ``LoRARequest`` load an InA folder and compute, per token and
per adapter slot, ``W0·x + s·B·f(A·x − ρ·max_r(A·x))`` with vLLM's own multi-adapter batching. What
cannot be computed exactly is refused when the adapter loads, in one line. Without the plugin vLLM
keeps refusing InA folders (their ``ina_inhibition`` tensors are unknown to it).

Imports ``ina.core`` only. vLLM runs :func:`register` in each of its processes.
"""

from __future__ import annotations


def register() -> None:
    """vLLM's entry point: refuse any vLLM but the supported one, then install the patches (once per process)."""
    from .version import check_vllm_version

    check_vllm_version()
    from .patches import install

    install()
