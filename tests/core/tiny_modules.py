"""Tiny custom models for the core's tests: each layer type InA gates, in milliseconds."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class MLP(nn.Module):
    """Two linear layers (PEFT's `MLP` shape): input (batch, 10) floats."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.lin1 = nn.Linear(20, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(X)))  # (batch, 2)

    @staticmethod
    def inputs(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 10, generator=torch.Generator().manual_seed(3))


class EmbConv1D(nn.Module):
    """An embedding under a GPT-2 style `Conv1D` (weight stored in × out): input (batch, 6) token ids."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 5)
        self.conv1d = Conv1D(8, 5)
        self.lin0 = nn.Linear(6 * 8, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv1d(self.emb(X)))  # (batch, 6, 8)
        return self.lin0(hidden.flatten(1))  # (batch, 2)

    @staticmethod
    def inputs(batch: int = 4) -> torch.Tensor:
        return torch.randint(0, 100, (batch, 6), generator=torch.Generator().manual_seed(3))


class FusedQKV(nn.Module):
    """Self-attention with one fused query/key/value projection (BLOOM, GPT-2): input (batch, 5, 8) floats."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(X).split(8, dim=-1)  # 3 × (batch, seq, 8)
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)  # (batch, seq, seq)
        return self.out((weights @ v).mean(dim=1))  # (batch, 2)

    @staticmethod
    def inputs(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 5, 8, generator=torch.Generator().manual_seed(3))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "emb_conv1d": EmbConv1D, "fused_qkv": FusedQKV}


def build(name: str, seed: int = 0) -> nn.Module:
    """A fresh base model ``name`` with fixed weights (the same for every call with the same seed)."""
    torch.manual_seed(seed)
    return MODELS[name]().eval()


def randomize_adapters(model: nn.Module, seed: int = 1, std: float = 0.5) -> None:
    """Make every adapter weight non-zero, so save/load and mixing checks cannot pass trivially."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
