"""``python -m ina.integrations.vllm.check``: one line saying which vLLM, torch and transformers run, and
whether vLLM finds the plugin (exit code 1 if not). Run by scripts/setup_vllm."""

from __future__ import annotations

import sys
from importlib import metadata


def main() -> int:
    from .version import check_vllm_version

    try:
        vllm_version = check_vllm_version()
    except RuntimeError as error:
        print(f"setup_vllm: {error}", file=sys.stderr)
        return 1
    plugins = [e.value for e in metadata.entry_points(group="vllm.general_plugins") if e.name == "ina"]
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "peft"))
    if plugins != ["ina.integrations.vllm:register"]:
        print(
            f"setup_vllm: vLLM's entry point `ina` not found (got {plugins}); reinstall ina here",
            file=sys.stderr,
        )
        return 1
    print(f"setup_vllm: vLLM {vllm_version} with ina's plugin ({plugins[0]}); {versions}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
