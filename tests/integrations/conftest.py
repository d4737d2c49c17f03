"""InA adapters on the embedded SmolLM2 (float32) with PEFT's references, and a runner for vLLM's side.

The adapters are built and the references computed here, in ina's .venv (PEFT + ina); the engine runs
in .venv-vllm as a subprocess (``vllm_engine.py``), which writes its results as JSON. Tests that need
it are marked ``vllm`` (``scripts/test --vllm``) and skip, with the reason, where .venv-vllm is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B_SCALE = 0.15  # random non-zero B: large enough that every adapter changes the greedy text
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.\n",
    "def fibonacci(n):",
    "Three facts about cats: 1.",
]
TEACHER_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods."


def vllm_python() -> Path:
    """.venv-vllm's python, or a skip that says how to make it."""
    if not VLLM_PYTHON.exists():
        pytest.skip("no .venv-vllm: run scripts/setup --vllm (vLLM 0.32.0 with ina's plugin) first")
    return VLLM_PYTHON


def vllm_env(**extra: str) -> dict[str, str]:
    # vLLM sizes its own thread pool (one thread per core): not the 1 thread ina's tests run with
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "OMP_NUM_THREADS")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB: the tiny model needs little, and the box is shared
        VLLM_NO_USAGE_STATS="1",
        VLLM_DO_NOT_TRACK="1",
    )
    env.update(extra)
    return env


def run_vllm(script: str, spec: dict[str, Any], workdir: Path, timeout: float = 1500, **env: str) -> dict:
    """Run ``tests/integrations/<script>`` in .venv-vllm on ``spec``; its JSON result (or a failure with its log)."""
    python = vllm_python()
    spec_file, out_file, log_file = workdir / "spec.json", workdir / "result.json", workdir / "vllm.log"
    spec_file.write_text(json.dumps(spec))
    with log_file.open("w") as log:
        done = subprocess.run(
            [str(python), str(Path(__file__).with_name(script)), str(spec_file), str(out_file)],
            cwd=workdir,
            env=vllm_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    if done.returncode != 0 or not out_file.exists():
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{script} exited {done.returncode}; last lines of {log_file}:\n{tail}")
    return json.loads(out_file.read_text())


# --------------------------------------------------------------------------------------- adapters


def base_path() -> str:
    from ina.embedded.smollm import ensure_model

    return str(ensure_model())


def _randomise_b(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * B_SCALE)


def save_adapter(out: Path, config: Any, seed: int) -> Path:
    """``config`` on a fresh SmolLM2 with random non-zero B, saved to ``out`` (PEFT + ina)."""
    from transformers import AutoModelForCausalLM

    from ina.foundation.harness import peft_model

    torch.manual_seed(seed)  # A: PEFT's own initialisation, seeded
    model = peft_model(AutoModelForCausalLM.from_pretrained(base_path(), dtype=torch.float32), config)
    _randomise_b(model, seed)
    model.save_pretrained(out)
    return out


def build_adapters(root: Path) -> dict[str, Path]:
    """The adapters every vLLM check uses, by name.

    ``ina03``: ρ 0.3 on all seven linear modules, r 4 (below max_lora_rank 8: padded ranks);
    ``ina01``: ρ 0.1 with a rank pattern (q 8, v 2, down 2) and an alpha pattern, gelu;
    ``plain``: plain LoRA (``peft_type`` LORA); ``ina0``: the same weights as InA with ρ = 0;
    ``bad``: ``ina03`` with ``inhibition`` 1.5 in its config.
    """
    from peft import LoraConfig

    from ina import InAConfig

    def ina(**kwargs: Any) -> Any:
        return InAConfig(task_type="CAUSAL_LM", target_modules=ALL_LINEAR, r=4, lora_alpha=8, **kwargs)

    adapters = {
        "ina03": save_adapter(root / "ina03", ina(inhibition=0.3), seed=1),
        "ina01": save_adapter(
            root / "ina01",
            ina(
                inhibition=0.1,
                activation="gelu",
                rank_pattern={"q_proj": 8, "v_proj": 2, "down_proj": 2},
                alpha_pattern={"o_proj": 16},
            ),
            seed=2,
        ),
        "plain": save_adapter(
            root / "plain",
            LoraConfig(task_type="CAUSAL_LM", target_modules=ALL_LINEAR, r=4, lora_alpha=8),
            seed=3,
        ),
    }
    shutil.copytree(adapters["plain"], root / "ina0")
    ina(inhibition=0.0).save_pretrained(str(root / "ina0"))  # the same weights, as InA with ρ = 0
    adapters["ina0"] = root / "ina0"
    shutil.copytree(adapters["ina03"], root / "bad")
    config = json.loads((root / "bad" / "adapter_config.json").read_text())
    (root / "bad" / "adapter_config.json").write_text(json.dumps({**config, "inhibition": 1.5}))
    adapters["bad"] = root / "bad"
    return adapters


# --------------------------------------------------------------------------------------- PEFT's side


class PeftReference:
    """The base with the adapters loaded by ina (PEFT), for greedy tokens and teacher-forced log-probs."""

    def __init__(self, adapters: dict[str, Path]) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ina import load_adapter

        self.tokenizer = AutoTokenizer.from_pretrained(base_path())
        model: Any = AutoModelForCausalLM.from_pretrained(base_path(), dtype=torch.float32)
        for name, path in adapters.items():
            model = load_adapter(model, path, adapter_name=name)
        self.model = model.eval()

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def _logits(self, adapter: str | None, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            if adapter is None:
                with self.model.disable_adapter():
                    return self.model(torch.tensor([ids])).logits[0].double()
            self.model.set_adapter(adapter)
            return self.model(torch.tensor([ids])).logits[0].double()

    def greedy(self, adapter: str | None, ids: list[int], steps: int) -> list[int]:
        """``steps`` argmax tokens with the KV cache, EOS included and not stopping (vLLM's ``ignore_eos``)."""
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            if adapter is None:
                stack.enter_context(self.model.disable_adapter())
            else:
                self.model.set_adapter(adapter)
            step = self.model(torch.tensor([ids]), use_cache=True)
            out = [int(step.logits[0, -1].argmax())]
            while len(out) < steps:
                step = self.model(
                    torch.tensor([out[-1:]]), past_key_values=step.past_key_values, use_cache=True
                )
                out.append(int(step.logits[0, -1].argmax()))
        return out

    def log_probs(self, adapter: str | None, ids: list[int]) -> torch.Tensor:
        """(len(ids), vocab): row k is log p(· | ids[:k+1])."""
        return torch.log_softmax(self._logits(adapter, ids), dim=-1)


# --------------------------------------------------------------------------------------- the export

EXPORT_CALIBRATION_TOKENS, EXPORT_HELDOUT_TOKENS = 4096, 160


def export_adapter(root: Path) -> tuple[Path, Path, dict, list[list[int]]]:
    """An InA adapter (ρ 0.3 on q, v), its ``ina export lora`` (embedded instruction data), the report,
    and the held-out token ids the report measured its agreement on: (src, dst, report, heldout)."""
    from transformers import AutoTokenizer

    from ina import InAConfig
    from ina.export import calibration
    from ina.export.export import _prompt_settings, export_lora
    from ina.export.options import ExportOptions

    config = InAConfig(
        task_type="CAUSAL_LM", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8, inhibition=0.3
    )
    src = save_adapter(root / "inaexp", config, seed=4)
    options = ExportOptions(
        src=str(src),
        dst=str(root / "export"),
        calibration_tokens=EXPORT_CALIBRATION_TOKENS,
        heldout_tokens=EXPORT_HELDOUT_TOKENS,
        prompts=0,
    )
    report = export_lora(options)
    tokenizer = AutoTokenizer.from_pretrained(base_path())
    template, add_eos, cutoff = _prompt_settings(str(src), tokenizer)
    data = calibration.load_calibration(
        str(src), None, template, tokenizer, options.calibration_tokens, options.heldout_tokens,
        options.max_length or int(cutoff or 256), add_eos, options.seed, [],
    )  # fmt: skip  # the export's own call: the same held-out samples
    return src, root / "export", report, [list(sample.input_ids) for sample in data.heldout]
