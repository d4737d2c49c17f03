"""PEFT's own mixed-batch path (the reference for the serving engine) with a bf16 base and fp32 adapters."""

import torch
from peft import get_peft_model
from torch import nn

from ina.core.config import InAConfig


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(x))


def test_mixed_batch_embedding_with_bf16_base_and_fp32_adapters_equals_each_adapter_alone():
    torch.manual_seed(0)
    model = get_peft_model(
        Tiny().to(torch.bfloat16),
        InAConfig(target_modules=["emb"], r=4, inhibition=0.3, init_lora_weights=False),
    )
    model.add_adapter("b", InAConfig(target_modules=["emb"], r=4, inhibition=0.5, init_lora_weights=False))
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.float()
    model.eval()
    x = torch.randint(0, 50, (3, 5))
    with torch.no_grad():
        mixed = model(x, adapter_names=["default", "b", "__base__"])
        assert mixed.dtype == torch.bfloat16
        for row, adapter in enumerate(["default", "b"]):
            model.set_adapter(adapter)
            torch.testing.assert_close(mixed[row : row + 1], model(x[row : row + 1]), rtol=0, atol=0)
        with model.disable_adapter():
            torch.testing.assert_close(mixed[2:], model(x[2:]), rtol=0, atol=0)
