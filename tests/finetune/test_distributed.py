"""`torchrun --nproc_per_node 2 -m ina finetune`: two CPU processes (gloo) train one data-parallel adapter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_helpers import alpaca_records, free_port, write_json
from safetensors.torch import load_file

from ina.cli import main


def test_two_processes_train_one_identical_adapter_and_save_it_once(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(tmp_path / "data.json", alpaca_records(30))
    flags = [
        "--base_model", str(model_dir), "--data_path", "data.json", "--batch_size", "4", "--micro_batch_size", "4",
        "--val_set_size", "5", "--max_steps", "4", "--save_steps", "2", "--learning_rate", "1e-2",
        "--disable_tqdm", "true", "--show_examples", "1", "--example_max_new_tokens", "3",
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "ina", "finetune", "--output_dir", "out", *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]

    out = tmp_path / "out"
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    # --batch_size 4 is kept: 2 processes × 2 per forward (micro-batch 4 lowered) × 1 accumulation step, said once
    assert summary["effective_batch_size"] == 4
    assert done.stdout.count("note: --batch_size 4 is kept over 2 process(es)") == 1
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

    # the same validation examples in one process: the same base loss, to the last bit (5 examples in
    # batches of 2 over 2 processes: the last step is padded with a repeated example, not counted twice)
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--output_dir", "one", *flags, "--max_steps", "1", "--show_examples", "0"]) == 0
    single = json.loads((tmp_path / "one" / "training_summary.json").read_text())
    assert single["world_size"] == 1 and single["val_examples"] == summary["val_examples"] == 5
    assert summary["val_loss_base"] == single["val_loss_base"]

    # a second launch into the finished run: refused before training, one line (from the first process)
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode != 0
    errors = [
        line for line in (again.stdout + again.stderr).splitlines() if line.startswith("ina finetune: error:")
    ]
    assert len(errors) == 1 and "holds a finished run" in errors[0] and "--overwrite_output_dir" in errors[0]
    assert load_file(str(out / "adapter_model.safetensors")).keys() == final.keys()
