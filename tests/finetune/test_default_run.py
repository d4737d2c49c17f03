"""The README's main job: `ina finetune` with no model or data fine-tunes the embedded SmolLM2 (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_no_argument_run_lowers_validation_loss_and_shows_answers(tmp_path: Path) -> None:
    from ina.embedded.instruct_data import DATA_FILE, data_dir
    from ina.embedded.smollm import model_dir

    if not (model_dir() / "model.safetensors").is_file() or not (data_dir() / DATA_FILE).is_file():
        pytest.skip("the embedded model and data are not prepared: run scripts/setup")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "ina", "finetune", "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    assert summary["prompt_template"] == "chat" and summary["global_step"] == 24
    assert summary["val_loss_finetuned"] < summary["val_loss_base"]
    # all 16 held-out prompts recorded with both answers; 3 printed
    assert len(summary["examples"]) == summary["val_examples"] == 16
    assert all(e["base"] and e["finetuned"] for e in summary["examples"])
    assert done.stdout.count("=== held-out prompt") == 3 and "validation loss: base" in done.stdout
