"""Without `import ina`, stock PEFT refuses an InA adapter loudly instead of running it as LoRA."""

import subprocess
import sys
import textwrap

import torch
from peft import get_peft_model

from ina import InAConfig
from ina.testing import tiny_model


def test_loading_without_ina_imported_fails(tmp_path):
    model = get_peft_model(tiny_model("llama"), InAConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.save_pretrained(tmp_path / "adapter")
    tiny_model("llama").save_pretrained(tmp_path / "base")
    script = textwrap.dedent(
        f"""
        import sys
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        base = AutoModelForCausalLM.from_pretrained({str(tmp_path / "base")!r})
        try:
            PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r})
        except Exception as error:
            print("refused:", type(error).__name__, error)
            sys.exit(0)
        print("loaded as", type(base).__name__)
        sys.exit(1)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "refused" in done.stdout and "INA" in done.stdout
