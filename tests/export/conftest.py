"""A tiny real LLaMA, InA adapters with chosen weights, and calibration text, built offline in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

WORDS = [
    "I",
    "put",
    "my",
    "red",
    "bag",
    "in",
    "the",
    "black",
    "bag",
    "what",
    "is",
    "the",
    "colour",
    "of",
    "my",
    "bag",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "tell",
    "me",
    "a",
    "joke",
    "about",
    "cat",
    "and",
    "positive",
    "negative",
    "review",
    "movie",
    "film",
    "sentiment",
]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    from ina.testing import tiny_model, tiny_tokenizer

    base = tmp_path_factory.mktemp("export") / "tiny-llama"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    return str(base)


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Alpaca records of random corpus words: short instructions and one-word labels."""
    rng = random.Random(0)
    records = [
        {
            "instruction": " ".join(rng.choices(WORDS, k=rng.randint(4, 10))),
            "input": " ".join(rng.choices(WORDS, k=rng.randint(0, 8))),
            "output": rng.choice(["positive", "negative"]),
        }
        for _ in range(400)
    ]
    path = tmp_path_factory.mktemp("calibration") / "records.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


def make_adapter(
    base: str,
    out: Path,
    inhibition: float,
    activation: str = "leaky_relu",
    seed: int = 1,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "o_proj"),
    linear_gate: bool = False,
) -> Path:
    """An InA adapter on ``base`` with random non-zero B (scale 0.5).

    ``linear_gate``: each row of B sums to zero, so ``B·(h − ρ·max_r h·1) = B·h``; with the identity
    activation the branch is then the known linear map ``s·B·A`` although the gate runs.
    """
    from transformers import AutoModelForCausalLM

    from ina import InAConfig
    from ina.foundation.harness import peft_model

    config = InAConfig(
        r=4,
        lora_alpha=8,
        target_modules=list(targets),
        inhibition=inhibition,
        activation=activation,
        task_type="CAUSAL_LM",
    )
    model = peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                values = torch.randn(parameter.shape, generator=generator) * 0.5
                if linear_gate:
                    values -= values.mean(dim=1, keepdim=True)
                parameter.copy_(values)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def gated_export(tmp_path_factory: pytest.TempPathFactory, tiny_base: str, calibration_file: str) -> tuple:
    """An InA adapter (ρ = 0.9, leaky_relu) and its rank-2 export with adapter.gguf: (src, dst, report)."""
    from ina.export.export import export_lora
    from ina.export.options import ExportOptions

    root = tmp_path_factory.mktemp("gated")
    src = make_adapter(tiny_base, root / "ina", inhibition=0.9, seed=3)
    options = ExportOptions(
        src=str(src),
        dst=str(root / "lora"),
        calibration=calibration_file,
        calibration_tokens=3000,
        heldout_tokens=600,
        prompts=3,
        max_new_tokens=4,
        rank=2,
        format="gguf",
    )
    return src, root / "lora", export_lora(options)
