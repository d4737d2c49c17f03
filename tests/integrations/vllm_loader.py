"""vLLM's own adapter loader, with vLLM's plugins as ``VLLM_PLUGINS`` selects them (run in .venv-vllm).

    .venv-vllm/bin/python tests/integrations/vllm_loader.py SPEC.json RESULT.json

SPEC: ``{"folders": {name: folder}}``. RESULT, per folder: the plugins vLLM loaded, the loader's error
(None when it loaded) and the InA gate it attached (None for plain LoRA).
"""

from __future__ import annotations

import json
import sys

MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def main(spec_file: str, out_file: str) -> None:
    with open(spec_file) as stream:
        spec = json.load(stream)
    import torch
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_general_plugins, load_plugins_by_group

    plugins = sorted(load_plugins_by_group(DEFAULT_PLUGINS_GROUP))
    load_general_plugins()  # what every vLLM process does first
    result = {}
    for name, folder in spec["folders"].items():
        outcome = {"plugins": plugins, "error": None}
        try:
            helper = PEFTHelper.from_local_dir(folder, 8192)
            lora = LoRAModel.from_local_checkpoint(folder, MODULES, helper, device="cpu", dtype=torch.float32)
            gate = getattr(lora, "ina_gate", None)
            outcome["gate"] = (
                None if gate is None else [gate.inhibition, gate.activation, gate.negative_slope]
            )
        except Exception as error:  # the refusal, as vLLM's worker would raise it
            outcome["error"] = f"{type(error).__name__}: {error}"
        result[name] = outcome
    with open(out_file, "w") as stream:
        json.dump(result, stream)


if __name__ == "__main__":
    main(*sys.argv[1:3])
