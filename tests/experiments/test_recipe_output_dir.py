"""`ina glue` / `ina squad` into a folder that holds a run: refused untouched, replaced only when told; the
record carries the adapter's sha256 and the command says where it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_glue import FAST
from test_squad import squad_json

from ina.cli import main
from ina.core.loading import adapter_checksums, check_adapter_folder
from ina.experiments.squad_data import synthetic_squad


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _refused_then_replaced(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("wrote the adapter with its ") and printed[-1].endswith(
        f" to {out.resolve()}"
    )
    record = json.loads((out / "result.json").read_text())
    assert record["adapter_sha256"] == adapter_checksums(out)  # every later load compares it
    check_adapter_folder(out)
    before = _files(out)

    assert main([*argv, "--learning_rate", "0.01"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "holds a finished run" in error[0] and "--overwrite_output_dir" in error[0]
    assert _files(out) == before  # nothing written, nothing lost

    assert main([*argv, "--learning_rate", "0.01", "--overwrite_output_dir"]) == 0
    replaced = json.loads((out / "result.json").read_text())
    assert replaced["learning_rate"] == 0.01 and replaced["adapter_sha256"] == adapter_checksums(out)
    check_adapter_folder(out)
    return record


def test_glue_records_its_adapter_and_refuses_a_finished_folder(
    tiny_encoder_dir, sentiment_files, tmp_path, capsys
) -> None:
    train, dev = sentiment_files
    out = tmp_path / "run"
    argv = [
        "glue",
        "--task_name",
        "sst2",
        "--model_name_or_path",
        str(tiny_encoder_dir),
        "--output_dir",
        str(out),
    ]
    argv += ["--train_file", str(train), "--validation_file", str(dev), "--lora_r", "2", *FAST]
    record = _refused_then_replaced(argv, out, capsys)
    assert sum(record["predicted_classes"].values()) == 12  # every validation row, by predicted label
    assert set(record["predicted_classes"]) <= {"negative", "positive"}


def test_squad_records_its_adapter_and_refuses_a_finished_folder(tiny_qa_dir, tmp_path, capsys) -> None:
    examples = synthetic_squad(12, seed=5)
    train = squad_json(tmp_path / "train.json", examples[:8])
    dev = squad_json(tmp_path / "dev.json", examples[8:])
    out = tmp_path / "qa"
    argv = ["squad", "--model_name_or_path", str(tiny_qa_dir), "--train_file", str(train)]
    argv += ["--validation_file", str(dev), "--version_2_with_negative", "--max_seq_length", "48"]
    argv += ["--doc_stride", "16", "--output_dir", str(out), *FAST]
    _refused_then_replaced(argv, out, capsys)
