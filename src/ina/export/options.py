"""`ina export lora`'s options, declared once for the command line and for Python callers (no framework imports)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from ina.foundation.arguments import option
from ina.foundation.errors import UsageError


@dataclass
class ExportOptions:
    """Where from, where to, and how to fit and measure an export (see each field's help)."""

    src: str = dataclasses.field(default="", metadata={"flag": False})
    dst: str = dataclasses.field(default="", metadata={"flag": False})
    base_model: str = option("", "base model folder; default: the base recorded in SRC's adapter_config.json")
    calibration: str = option(
        "",
        "text to fit on: Alpaca/ShareGPT/messages .json or .jsonl, or a .txt file (paragraphs); default: the "
        "adapter's training data when `ina finetune` made it, else the embedded instruction data",
    )
    calibration_tokens: int = option(16384, "tokens of calibration text to fit on")
    heldout_tokens: int = option(4096, "tokens of further text, never fitted on, to measure the export on")
    rank: int = option(
        0, "rank of the export; 0: the smallest rank reaching --explained_variance in every layer (≤ SRC's r)"
    )
    explained_variance: float = option(
        0.99, "share of each layer's linearly explainable branch energy the automatic rank must keep"
    )
    format: Literal["peft", "gguf"] = option(
        "peft",
        "peft: a PEFT LoRA folder; gguf: the same plus adapter.gguf for llama.cpp / Ollama (llama bases)",
    )
    gguf_base: str = option(
        "",
        "with --format gguf: a GGUF of the base on which llama-cpp-python (if installed) answers the held-out "
        "prompts with adapter.gguf; default for the embedded SmolLM2: its own Q4_1 GGUF",
    )
    min_agreement: float = option(
        0.0,
        "refuse to write the export if its top-1 next-token agreement with InA on held-out text is below this",
    )
    prompts: int = option(12, "held-out prompts answered by InA, the export and the base, side by side")
    max_new_tokens: int = option(24, "tokens generated per side-by-side answer")
    max_length: int = option(
        0, "tokens per calibration sample; 0: the adapter's cutoff_len (ina_prompt.json), else 256"
    )
    batch_size: int = option(8, "samples per forward pass")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = option("auto", "model dtype: auto (float32 on CPU), float32, bfloat16, float16")
    torch_threads: int = option(0, "CPU threads for torch; 0: torch's default")
    seed: int = option(0, "seed of the calibration shuffle (which samples are fitted on, which held out)")
    overwrite: bool = option(False, "replace an existing DST")

    def problems(self) -> list[str]:
        """Every invalid value, one message each."""
        problems = []
        for name in ("calibration_tokens", "heldout_tokens", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be at least 1; got {getattr(self, name)}")
        for name in ("rank", "prompts", "max_length", "torch_threads"):
            if getattr(self, name) < 0:
                problems.append(f"--{name} must be ≥ 0; got {getattr(self, name)}")
        if not 0 < self.explained_variance <= 1:
            problems.append(f"--explained_variance must be in (0, 1]; got {self.explained_variance}")
        if not 0 <= self.min_agreement <= 1:
            problems.append(
                f"--min_agreement must be in [0, 1] (a share of tokens); got {self.min_agreement}"
            )
        if self.format not in ("peft", "gguf"):
            problems.append(f"--format must be peft or gguf; got {self.format!r}")
        if self.gguf_base and self.format != "gguf":
            problems.append(f"--gguf_base is only used with --format gguf; got --format {self.format}")
        if not self.src or not self.dst:
            problems.append("SRC and DST are both needed: ina export lora SRC DST")
        return problems

    def check(self) -> None:
        """Raise one `UsageError` naming every invalid value."""
        problems = self.problems()
        if problems:
            raise UsageError("; ".join(problems))
