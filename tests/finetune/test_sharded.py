"""Sharded training saves real adapters: FSDP full shard (torch's API on 2 gloo CPU processes), launch checks.

`ina finetune` runs FSDP through accelerate, which enables it only on GPU-like devices; on this CPU
machine the save and resume logic is exercised with torch's own FSDP2 and state-dict API
(`fsdp_worker.py`), and `ina finetune` refuses FSDP at once instead of silently training plain DDP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import fsdp_worker
import pytest
from finetune_helpers import REPO, alpaca_records, free_port, write_json

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_fsdp_full_shard_saves_a_whole_adapter_and_resumes_exactly(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), fsdp_worker.__file__, str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    # each process held half of every adapter matrix (4 × 32 = 128 values, 64 here)
    assert set(result["local_numel"].values()) == {64}
    # the saved adapter: every tensor non-empty, a single-process run's shapes, the gathered weights
    assert result["empty"] == [] and result["tensors"] == 12  # 4 modules × (A, B, ina_inhibition)
    assert result["shapes_match"] and result["equals_gathered"] and result["trained"]
    assert result["reload_bit_exact"]  # loaded on a fresh base: the same logits, bit for bit
    # resumed from the step-2 checkpoint: Adam's state and step restored, then the same weights as
    # the run that never stopped
    assert result["restored_steps"] == [2.0] and result["optimizer_restored"]
    assert result["resumed_equals_straight"] and result["moved_after_resume"]


def _optimizer_tensors(state: object, prefix: str = "") -> dict[str, object]:
    """Every tensor of a (nested) optimizer state, by path."""
    import torch

    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {}
    found: dict[str, object] = {}
    for key, value in items:
        found.update(_optimizer_tensors(value, f"{prefix}/{key}"))
    return found


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (pip install 'ina[deepspeed]')"
)
def test_deepspeed_zero3_saves_a_whole_adapter_and_resumes_from_its_step(
    model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import ina
    from ina.foundation.harness import peft_model

    data = write_json(tmp_path / "d.json", alpaca_records(24))

    def launch(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO / "examples" / "accelerate" / "deepspeed_zero3.yaml"), "--num_processes", "2",
                   "--main_process_port", str(free_port()), "-m", "ina", "finetune", "--base_model", str(model_dir),
                   "--data_path", str(data), "--output_dir", str(out), "--batch_size", "4", "--micro_batch_size", "2",
                   "--val_set_size", "0", "--save_steps", "2", "--learning_rate", "1e-2", "--lr_scheduler_type",
                   "constant", "--warmup_steps", "0", "--logging_steps", "1", "--show_examples", "0",
                   "--disable_tqdm", "true", "--lora_target_modules", "q_proj,v_proj", *extra]  # fmt: skip
        done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    launch(tmp_path / "straight", "--max_steps", "4")
    launch(tmp_path / "resumed", "--max_steps", "2")
    resumed = launch(tmp_path / "resumed", "--max_steps", "4", "--resume_from_checkpoint", "last",
                     "--overwrite_output_dir")  # fmt: skip
    straight = tmp_path / "straight"
    summary = json.loads((straight / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    assert summary["adapter_tensors"] == 12  # 4 modules × (A, B, the ina_inhibition marker)
    saved = load_file(str(straight / "adapter_model.safetensors"))
    single = get_peft_model_state_dict(
        peft_model(AutoModelForCausalLM.from_pretrained(model_dir), _ds_config())
    )
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in single.items()}
    assert all(v.numel() > 0 for v in saved.values())
    # equals the trained weights gathered from the ZeRO-3 shards by DeepSpeed's own API
    gathered = get_fp32_state_dict_from_zero_checkpoint(str(straight / "checkpoint-4"))
    for name, tensor in saved.items():
        if "lora_" in name:
            assert torch.equal(tensor, gathered[name.replace(".weight", ".default.weight")]), name
    # reloads bit-exactly: the saved folder on a fresh base gives the gathered weights' logits
    reference = peft_model(AutoModelForCausalLM.from_pretrained(model_dir), _ds_config())
    reference.load_state_dict(gathered, strict=False)
    reloaded = ina.load_adapter(AutoModelForCausalLM.from_pretrained(model_dir), straight)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        assert torch.equal(reference.eval()(input_ids=ids).logits, reloaded.eval()(input_ids=ids).logits)
    # resumed from checkpoint-2: steps 3 and 4 only, the same optimizer state and weights as the straight run
    again = json.loads((tmp_path / "resumed" / "training_summary.json").read_text())
    assert again["global_step"] == 4 and again["resumed_from"] == "True"
    assert [line.startswith("{'loss'") for line in resumed.stdout.splitlines()].count(True) == 2
    for rank in (0, 1):
        name = f"global_step4/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        want = _optimizer_tensors(torch.load(straight / "checkpoint-4" / name, weights_only=False))
        got = _optimizer_tensors(torch.load(tmp_path / "resumed" / "checkpoint-4" / name, weights_only=False))
        assert want.keys() == got.keys() and want
        assert all(torch.equal(want[k], got[k]) for k in want)
    final = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert all(torch.equal(final[k], saved[k]) for k in saved)


def _ds_config() -> object:
    from ina.core.config import InAConfig

    return InAConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], inhibition=0.3,
                     task_type="CAUSAL_LM")  # fmt: skip
