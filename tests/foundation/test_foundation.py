"""The foundation under the rooms: atomic files, adapter specs and flags, the dtype rule."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from ina.foundation import files
from ina.foundation.adapters import (
    AdapterArguments,
    AdapterSpecError,
    inhibition_config,
    parse_adapter_specs,
    split_list,
)
from ina.foundation.errors import UsageError
from ina.foundation.models import resolve_dtype
from ina.testing import tiny_model


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "results.json"
    files.write_json(path, {"accuracy": 0.5})
    with pytest.raises(TypeError):
        files.write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path) -> None:
    previous = os.umask(0o027)
    try:
        path = files.write_text(tmp_path / "a" / "b.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_text() == "x"


def test_jsonl_round_trips_non_ascii(tmp_path) -> None:
    rows = [{"text": "好评"}, {"text": "bien sûr"}]
    path = files.write_jsonl(tmp_path / "rows.jsonl", rows)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows


def _adapter(folder) -> str:
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    return str(folder)


def test_adapter_specs_name_the_flag_and_the_fix(tmp_path) -> None:
    a = _adapter(tmp_path / "ina30")
    assert parse_adapter_specs([f"x={a}", a]) == {"x": tmp_path / "ina30", "ina30": tmp_path / "ina30"}
    for value, words in [
        (f"a.b={a}", "letters, digits"),
        (f"__base__={a}", "reserved"),
        (f"lora={a}", "prefix 'lora_'"),
        (f"x={tmp_path}", "no adapter_config.json"),
        ("=", "NAME=PATH"),
    ]:
        with pytest.raises(AdapterSpecError, match="--model") as raised:
            parse_adapter_specs([value], flag="--model")
        assert words in str(raised.value)
    with pytest.raises(UsageError, match="given twice"):
        parse_adapter_specs([f"x={a}", f"x={a}"])


def test_inhibition_config_reports_problems_under_flag_names() -> None:
    model = tiny_model("llama")
    config = inhibition_config(AdapterArguments(lora_target_modules="q_proj, v_proj"), model, "CAUSAL_LM")
    assert sorted(config.target_modules) == ["q_proj", "v_proj"] and config.inhibition == 0.3
    assert sorted(inhibition_config(AdapterArguments(), model).target_modules) == [
        "k_proj",
        "q_proj",
        "v_proj",
    ]
    with pytest.raises(UsageError, match=r"--inhibition.*got 1\.5") as raised:
        inhibition_config(AdapterArguments(inhibition=1.5, lora_r=0), model)
    assert "--lora_r" in str(raised.value)
    with pytest.raises(UsageError, match=r"--lora_target_modules.*nope"):
        inhibition_config(AdapterArguments(lora_target_modules="nope"), model)
    assert split_list(" a, ,b ") == ["a", "b"] and split_list("") is None


def test_one_dtype_rule() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(UsageError, match="--dtype must be one of"):
        resolve_dtype("float8", "cpu")
