"""The export is plain LoRA: stock PEFT, in a process that never imports ina, loads it and computes the fitted maps."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from ina.foundation.models import load_with_adapters

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from peft import PeftModel
    from peft.tuners.lora.layer import LoraLayer
    from transformers import AutoModelForCausalLM

    base, adapter, out = sys.argv[1:4]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    torch.manual_seed(0)
    deltas, x = {}, torch.randn(5, model.config.hidden_size)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                deltas[name] = module(x) - module.base_layer(x)
        ids = torch.arange(3, 40).reshape(1, -1)
        logits = model(input_ids=ids).logits
    assert not any(m == "ina" or m.startswith("ina.") for m in sys.modules), "ina was imported"
    torch.save({"x": x, "deltas": deltas, "logits": logits, "type": type(model.peft_config["default"]).__name__}, out)
    """
)


def test_stock_peft_loads_the_export_and_reproduces_the_fitted_maps(
    tmp_path, tiny_base, gated_export
) -> None:
    _, dst, _ = gated_export
    out = tmp_path / "stock.pt"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, tiny_base, str(dst), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(out)
    assert result["type"] == "LoraConfig"
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    assert len(result["deltas"]) == 6
    for name, delta in result["deltas"].items():
        A, B = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
        assert torch.allclose(delta, result["x"] @ A.T @ B.T, atol=1e-5), name  # scaling alpha / r = 1
    # the same folder through ina's loader (what the fidelity report measured) gives the same logits
    model, _ = load_with_adapters(tiny_base, {"export": dst}, dtype="float32", device="cpu")
    with torch.no_grad():
        ours = model(input_ids=torch.arange(3, 40).reshape(1, -1)).logits
    assert torch.allclose(ours, result["logits"], atol=1e-5)
