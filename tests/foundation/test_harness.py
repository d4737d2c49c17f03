"""The shared Trainer harness on a tiny real model: file modes, the zero-learning-rate warning, output-dir
checks, and DeepSpeed's accelerator note."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model

from ina.core.config import InAConfig
from ina.foundation import harness
from ina.testing import tiny_model


def _trainer(out: Path, *flags: str):
    from transformers import default_data_collator

    torch.manual_seed(0)
    config = InAConfig(r=2, target_modules=["q_proj", "v_proj"], inhibition=0.3, task_type="CAUSAL_LM")
    model = get_peft_model(tiny_model("llama"), config)
    rows = [{"input_ids": [1, 5 + i, 9, 12 + i], "labels": [1, 5 + i, 9, 12 + i]} for i in range(4)]
    arguments = harness.training_arguments(
        ["--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu", "true", *flags],
        str(out),
        command="test",
    )
    return harness.build_trainer(model, arguments, rows, data_collator=default_data_collator)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_adapters_and_checkpoints_get_the_mode_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        out = tmp_path / "run"
        trainer = _trainer(out, "--max_steps", "2", "--save_steps", "1", "--learning_rate", "1e-2")
        harness.train(trainer)
        harness.save_adapter(trainer, files={"extra.json": {"a": 1}}, verify=False)
    finally:
        os.umask(previous)
    written = [p for p in [*out.iterdir(), *out.glob("checkpoint-*/*")] if p.is_file()]
    names = {p.name for p in written}
    assert {"adapter_model.safetensors", "adapter_config.json", "extra.json", "optimizer.pt"} <= names
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_a_run_whose_every_step_has_learning_rate_0_warns_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ina"):
        harness.train(_trainer(tmp_path / "a", "--max_steps", "1", "--warmup_steps", "1"))
    warned = [r.getMessage() for r in caplog.records if "learning rate 0" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "--warmup_steps 0" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ina"):
        harness.train(_trainer(tmp_path / "b", "--max_steps", "2", "--warmup_steps", "1"))
        harness.train(_trainer(tmp_path / "c", "--max_steps", "1", "--warmup_steps", "0"))
    assert not [r for r in caplog.records if "learning rate 0" in r.getMessage()]


def test_output_dir_may_not_touch_the_inputs(tmp_path: Path) -> None:
    base, data = tmp_path / "base", tmp_path / "data" / "train.json"
    base.mkdir()
    data.parent.mkdir()
    data.write_text("[]")
    inputs = {"--base_model": base, "--data_path": data, "--hub": "owner/not-a-local-path"}
    for output, flag, relation in [
        (base, "--base_model", "is"),
        (base / "out", "--base_model", "lies inside"),
        (tmp_path, "--base_model", "holds"),
        (data.parent, "--data_path", "holds"),
    ]:
        with pytest.raises(harness.TrainingError, match=f"^--output_dir .* {relation} {flag} ") as caught:
            harness.check_output_dir(output, inputs)
        assert "nothing was changed" in str(caught.value)
    harness.check_output_dir(tmp_path / "elsewhere", inputs)
    checkpoint = tmp_path / "run" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    harness.check_output_dir(tmp_path / "run", inputs, resume=str(checkpoint))  # the usual resume
    for output in (checkpoint, checkpoint / "sub"):
        with pytest.raises(harness.TrainingError, match="--resume_from_checkpoint"):
            harness.check_output_dir(output, inputs, resume=str(checkpoint))
    with pytest.raises(harness.TrainingError, match="is a file"):
        harness.check_output_dir(data, {})


def test_deepspeed_says_nothing_about_the_cpu_but_still_warns(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    script = f"""
import logging, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_harness import _trainer
from pathlib import Path
_trainer(Path({str(tmp_path / "run")!r}), "--max_steps", "1")
logging.getLogger("DeepSpeed").warning("a real DeepSpeed warning")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr  # DeepSpeed logs to stdout
    assert "a real DeepSpeed warning" in output
    assert "Setting accelerator to CPU" not in output
