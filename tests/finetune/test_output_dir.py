"""`ina finetune` into a folder that holds another run: refused, resumed only when asked, replaced only when told."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_helpers import QUICK, alpaca_records, write_json

from ina.cli import main
from ina.foundation.harness import TrainingError, stale_checkpoints


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _run(model_dir: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["finetune", "--base_model", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
                 *QUICK, "--show_examples", "0", "--max_steps", "2", "--save_steps", "2", *extra])  # fmt: skip


def test_a_finished_run_is_refused_untouched_then_replaced_with_the_flag(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_json(tmp_path / "d.json", alpaca_records(16))
    out = tmp_path / "out"
    assert _run(model_dir, data, out) == 0
    before = _files(out)
    assert "adapter_model.safetensors" in before and "checkpoint-2/adapter_model.safetensors" in before
    capsys.readouterr()

    assert _run(model_dir, data, out, "--learning_rate", "0.1") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert (
        f"--output_dir {out} holds a finished run (adapter_model.safetensors, training_summary.json" in error
    )
    assert "--overwrite_output_dir" in error and "new --output_dir" in error
    assert _files(out) == before  # nothing written, nothing lost
    # resuming a finished run would replace its adapter too: refused the same way
    assert _run(model_dir, data, out, "--resume_from_checkpoint", "last") == 2
    assert _files(out) == before

    assert _run(model_dir, data, out, "--learning_rate", "0.1", "--overwrite_output_dir") == 0
    after = _files(out)
    assert after["adapter_model.safetensors"] != before["adapter_model.safetensors"]
    assert json.loads(after["training_summary.json"])["learning_rate"] == 0.1


def test_an_unfinished_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for step in (2, 10, 4):  # sorted by step, not by name
        (out / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(TrainingError) as refused:
        stale_checkpoints(out, None, overwrite=False)
    message = str(refused.value)
    assert "holds an unfinished run (checkpoint-2, checkpoint-4, checkpoint-10, no final adapter)" in message
    assert "--resume_from_checkpoint last" in message and "--overwrite_output_dir" in message
    assert stale_checkpoints(out, True, overwrite=False) == []  # resuming is what the folder is for
    assert [p.name for p in stale_checkpoints(out, None, overwrite=True)] == [
        "checkpoint-2", "checkpoint-4", "checkpoint-10",
    ]  # fmt: skip
    assert stale_checkpoints(out, True, overwrite=True) == []  # resumed: its checkpoints are kept
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-10", "checkpoint-2", "checkpoint-4"]
    # a folder with other files (not a run) and a missing folder are fine
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("mine")
    assert stale_checkpoints(tmp_path / "notes", None, overwrite=False) == []
    assert stale_checkpoints(tmp_path / "missing", None, overwrite=False) == []
