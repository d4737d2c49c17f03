"""`torchrun --nproc_per_node 2 -m ina finetune`: two CPU processes (gloo) train one data-parallel adapter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from finetune_helpers import alpaca_records, write_json
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_one_identical_adapter_and_save_it_once(model_dir: Path, tmp_path: Path) -> None:
    write_json(tmp_path / "data.json", alpaca_records(24))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "ina", "finetune", "--base_model", str(model_dir),
        "--data_path", "data.json", "--output_dir", "out", "--batch_size", "4", "--micro_batch_size", "1",
        "--val_set_size", "4", "--max_steps", "4", "--save_steps", "2", "--learning_rate", "1e-2",
        "--disable_tqdm", "true", "--show_examples", "1", "--example_max_new_tokens", "3",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    out = tmp_path / "out"
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    # 4 examples per optimizer step = 2 processes × micro-batch 1 × 2 accumulation steps
    assert summary["effective_batch_size"] == 4
    # both ranks ended with bit-identical adapter weights (gathered from each process after training)
    first, second = summary["adapter_checksums"]
    assert first == second
    # exactly one final adapter, written once, no staging left; one report printed
    adapters = sorted(p.relative_to(out).as_posix() for p in out.rglob("adapter_model.safetensors"))
    assert adapters == [
        "adapter_model.safetensors",
        "checkpoint-2/adapter_model.safetensors",
        "checkpoint-4/adapter_model.safetensors",
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert done.stdout.count("validation loss: base") == 1
    # the final adapter is the step-4 state, trained (B moved away from zero)
    final = load_file(str(out / "adapter_model.safetensors"))
    checkpoint = load_file(str(out / "checkpoint-4" / "adapter_model.safetensors"))
    assert final.keys() == checkpoint.keys()
    assert all((final[k] == checkpoint[k]).all() for k in final)
    assert all(t.abs().sum() > 0 for k, t in final.items() if "lora_B" in k)
    assert summary["reload_max_abs_logit_diff"] == 0.0
