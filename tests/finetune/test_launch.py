"""Launching `ina finetune` on several processes and machines: each shipped config runs or refuses in one line.

Every config in examples/accelerate/ is for GPU machines; on this CPU machine each either runs (2 CPU
processes, a few steps, with the flags its refusal names) or stops at once with one line naming the fix.
The multi-node command of the docs runs as two torchrun agents (two rendezvous ranks, one machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import REPO, alpaca_records, free_port, write_json

from ina.cli import main
from ina.finetune.launch import launch_note, launch_problem, uses_deepspeed

CONFIGS = REPO / "examples" / "accelerate"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU does")


def _flags(model_dir: Path, data: Path, out: Path, steps: int = 2) -> list[str]:
    return ["--base_model", str(model_dir), "--data_path", str(data), "--output_dir", str(out), "--batch_size", "4",
            "--micro_batch_size", "2", "--val_set_size", "4", "--max_steps", str(steps), "--save_steps", "2",
            "--show_examples", "0", "--disable_tqdm", "true", "--lora_target_modules", "q_proj,v_proj"]  # fmt: skip


def _accelerate(config: str, *launch: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
            "--main_process_port", str(free_port()), *launch, "-m", "ina", "finetune"]  # fmt: skip


def test_each_mismatch_is_named_with_its_fix() -> None:
    assert launch_problem(["--bf16", "True"], cuda=True) is None  # a GPU machine: nothing to say
    bf16 = launch_problem(["--bf16", "True"], "examples/accelerate/finetune.yaml", env={})
    assert bf16 == (
        "--bf16 true (from --config examples/accelerate/finetune.yaml): bf16 mixed precision needs a GPU and this "
        "machine has none; pass --bf16 false to train in float32 on the CPU"
    )
    assert launch_problem(["--bf16", "false"], env={}) is None
    ddp = (
        launch_problem([], env={"ACCELERATE_MIXED_PRECISION": "bf16", "LOCAL_WORLD_SIZE": "4"}, cores=2) or ""
    )
    assert (
        "add --mixed_precision no" in ddp and "launch at most 2 (accelerate launch --num_processes 2" in ddp
    )
    assert len(ddp.splitlines()) == 1
    fsdp = launch_problem([], env={"ACCELERATE_USE_FSDP": "true", "LOCAL_WORLD_SIZE": "2"}, cores=2) or ""
    assert fsdp.startswith("FSDP needs GPUs") and "silently train plain data-parallel" in fsdp
    assert launch_problem(["--fsdp", "full_shard"], env={}) == fsdp
    assert (
        launch_problem([], env={"LOCAL_WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true"}, cores=2) is None
    )
    assert uses_deepspeed([], {"ACCELERATE_USE_DEEPSPEED": "true"}) and uses_deepspeed(
        ["--deepspeed", "x"], {}
    )
    assert "--cpu starts one process" in (launch_note({"ACCELERATE_USE_CPU": "True"}) or "")
    assert launch_note({"ACCELERATE_USE_CPU": "True", "WORLD_SIZE": "2"}) is None


@no_gpu
def test_finetune_yaml_stops_at_once_naming_the_flag(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_json(tmp_path / "d.json", alpaca_records(12))
    config = str(CONFIGS / "finetune.yaml")
    assert main(["finetune", "--config", config, *_flags(model_dir, data, tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"ina finetune: error: --bf16 true (from --config {config}): bf16 mixed precision needs a GPU and this "
        "machine has none; pass --bf16 false to train in float32 on the CPU"
    )
    assert not (tmp_path / "o").exists()


@no_gpu
@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "fix"),
    [
        ("ddp.yaml", "--mixed_precision no"),
        ("fsdp.yaml", "FSDP needs GPUs"),
        ("deepspeed_zero2.yaml", "launch at most"),
        ("deepspeed_zero3.yaml", "launch at most"),
    ],
)
def test_shipped_accelerate_configs_refuse_in_one_line(
    config: str, fix: str, model_dir: Path, tmp_path: Path
) -> None:
    data = write_json(tmp_path / "d.json", alpaca_records(12))
    command = [*_accelerate(config), *_flags(model_dir, data, tmp_path / "o")]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [
        line for line in (done.stdout + done.stderr).splitlines() if line.startswith("ina finetune: error:")
    ]
    assert len(errors) == 1 and fix in errors[0], done.stderr[-3000:]
    assert not (tmp_path / "o").exists()


@no_gpu
@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "fixes"),
    [("ddp.yaml", ["--mixed_precision", "no"]), ("deepspeed_zero2.yaml", [])],
)
def test_configs_run_two_cpu_processes_with_the_named_fixes(
    config: str, fixes: list[str], model_dir: Path, tmp_path: Path
) -> None:
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    data = write_json(tmp_path / "d.json", alpaca_records(24))
    command = [*_accelerate(config, "--num_processes", "2", *fixes), *_flags(model_dir, data, tmp_path / "o")]
    done = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2 and summary["effective_batch_size"] == 4
    first, second = summary["adapter_checksums"]
    assert first == second and summary["reload_max_abs_logit_diff"] == 0.0
    deepspeed_checkpoint = (tmp_path / "o" / "checkpoint-2" / "global_step2").is_dir()
    assert deepspeed_checkpoint == config.startswith("deepspeed")  # DeepSpeed really ran (not plain DDP)


@pytest.mark.slow
def test_two_rendezvous_ranks_train_the_main_recipe(model_dir: Path, tmp_path: Path) -> None:
    """The docs' several-machines command, as two torchrun agents of one process each on this machine."""
    data = write_json(tmp_path / "d.json", alpaca_records(24))
    port = free_port()
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "ina-test",
                "-m",
                "ina",
                "finetune",
                *_flags(model_dir, data, tmp_path / "o", steps=4),
            ],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    for agent, (_, err) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, err[-3000:]
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4 and summary["effective_batch_size"] == 4
    first, second = summary["adapter_checksums"]
    assert first == second  # one data-parallel adapter across the two "machines"
    assert sum(out.count("validation loss: base") for out, _ in outputs) == 1  # reported once, by rank 0
    assert summary["reload_max_abs_logit_diff"] == 0.0
