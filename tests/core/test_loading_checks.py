"""Every adapter load checks the folder first: one `AdapterFileError` line (file, rule, value, fix), never a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file
from tiny_modules import build, randomize_adapters

import ina
from ina import InAConfig
from ina.core.loading import (
    CHECKSUM_KEY,
    AdapterFileError,
    adapter_checksums,
    check_adapter_folder,
    convert_adapter,
)

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = get_peft_model(build("mlp"), InAConfig(r=4, target_modules=["lin0", "lin1"], inhibition=0.3))
    randomize_adapters(model)
    folder = tmp_path_factory.mktemp("saved") / "adapter"
    model.save_pretrained(folder)
    return folder


def _copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "adapter"))


def _edit_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS))


def _first_lora(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(k for k in tensors if "lora_B" in k)[0]


def _nan(tensors: dict[str, torch.Tensor]) -> None:
    tensors[_first_lora(tensors)][0, 0] = float("nan")


def _inf(tensors: dict[str, torch.Tensor]) -> None:
    tensors[_first_lora(tensors)][0, 0] = float("-inf")


# (id, how the folder is damaged, words the one-line message must hold)
DAMAGE: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("missing", lambda f: f.parent / "nowhere", ("nowhere", "must exist")),
    ("a file", lambda f: f / WEIGHTS, (WEIGHTS, "must be a folder")),
    (
        "no config",
        lambda f: ((f / "adapter_config.json").unlink(), f)[1],
        ("adapter_config.json", "must hold"),
    ),
    (
        "config not json",
        lambda f: ((f / "adapter_config.json").write_text("{'peft_type': INA"), f)[1],
        ("adapter_config.json", "valid UTF-8 JSON"),
    ),
    (
        "config not utf-8",
        lambda f: ((f / "adapter_config.json").write_bytes(b"\xff\xfe\x00garbage"), f)[1],
        ("adapter_config.json", "valid UTF-8 JSON"),
    ),
    (
        "config a list",
        lambda f: ((f / "adapter_config.json").write_text("[1, 2]"), f)[1],
        ("adapter_config.json", "JSON object", "list"),
    ),
    (
        "unknown peft_type",
        lambda f: (_set_config(f, peft_type="IA3"), f)[1],
        ("adapter_config.json", "`peft_type`", "'IA3'"),
    ),
    (
        "bad values",
        lambda f: (_set_config(f, inhibition=1.5, activation="relu6"), f)[1],
        ("adapter_config.json", "`inhibition` must be", "1.5", "`activation` must be", "relu6"),
    ),
    (
        "bad types",
        lambda f: (_set_config(f, lora_alpha="x", rank_pattern=[1], target_modules=[1], bias="x"), f)[1],
        (
            "`lora_alpha` must be a number",
            "`rank_pattern` must be a mapping",
            "`target_modules` must be",
            "`bias`",
        ),
    ),
    ("no weights", lambda f: ((f / WEIGHTS).unlink(), f)[1], ("adapter_model.safetensors or", "neither")),
    (
        "truncated",
        lambda f: ((f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:300]), f)[1],
        (WEIGHTS, "must be readable"),
    ),
    ("garbled", lambda f: ((f / WEIGHTS).write_bytes(b"\x00" * 64), f)[1], (WEIGHTS, "must be readable")),
    (
        "garbled bin",
        lambda f: ((f / WEIGHTS).unlink(), (f / "adapter_model.bin").write_bytes(b"not a pickle"), f)[2],
        ("adapter_model.bin", "must be readable"),
    ),
    ("no tensors", lambda f: (save_file({}, str(f / WEIGHTS)), f)[1], (WEIGHTS, "no tensors")),
    ("nan", lambda f: (_edit_tensors(f, _nan), f)[1], (WEIGHTS, "finite", "1 NaN/inf", "lora_B")),
    ("inf", lambda f: (_edit_tensors(f, _inf), f)[1], (WEIGHTS, "finite", "NaN/inf")),
]


def _set_config(folder: Path, **changes) -> None:
    config_file = folder / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **changes}))


@pytest.mark.parametrize("damage, words", [(d, w) for _, d, w in DAMAGE], ids=[i for i, _, _ in DAMAGE])
def test_each_damage_is_one_line_naming_file_rule_and_value(
    saved: Path, tmp_path: Path, damage, words
) -> None:
    folder = damage(_copy(saved, tmp_path))
    for load in (check_adapter_folder, lambda p: ina.load_adapter(build("mlp"), p)):
        with pytest.raises(AdapterFileError) as caught:
            load(folder)
        message = str(caught.value)
        assert "\n" not in message, message
        for word in words:
            assert word in message, (word, message)
    assert isinstance(caught.value, ValueError)


def test_a_sound_folder_passes_and_loads(saved: Path) -> None:
    config = check_adapter_folder(saved)
    assert config.inhibition == 0.3 and sorted(config.target_modules) == ["lin0", "lin1"]
    assert ina.load_adapter(build("mlp"), saved).peft_config["default"].inhibition == 0.3


def test_a_recorded_checksum_must_match(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    sums = adapter_checksums(folder)
    assert list(sums) == [WEIGHTS] and len(sums[WEIGHTS]) == 64
    (folder / "training_summary.json").write_text(json.dumps({"global_step": 3, CHECKSUM_KEY: sums}))
    check_adapter_folder(folder)  # recorded and matching

    def flip(tensors: dict[str, torch.Tensor]) -> None:  # a finite change that no other check sees
        tensors[_first_lora(tensors)][0, 0] += 1.0

    _edit_tensors(folder, flip)
    with pytest.raises(
        AdapterFileError, match=r"sha256 must match the one recorded in training_summary\.json"
    ):
        ina.load_adapter(build("mlp"), folder)
    (folder / "training_summary.json").rename(folder / "result.json")  # the experiments' record
    with pytest.raises(AdapterFileError, match=r"recorded in result\.json"):
        check_adapter_folder(folder)
    (folder / "result.json").write_text("{not json")  # an unreadable record is not part of the adapter
    check_adapter_folder(folder)


def test_convert_refuses_a_damaged_adapter_and_writes_nothing(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    _edit_tensors(folder, _nan)
    with pytest.raises(AdapterFileError, match="finite"):
        convert_adapter(folder, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_load_with_adapters_checks_every_folder_before_loading_the_base(saved: Path, tmp_path: Path) -> None:
    from ina.foundation.models import load_with_adapters

    folder = _copy(saved, tmp_path)
    _edit_tensors(folder, _nan)
    # the base does not exist: had it been loaded first, the error would be about the base
    with pytest.raises(AdapterFileError, match=r"^--adapter bad=") as caught:
        load_with_adapters(str(tmp_path / "no-base"), {"good": saved, "bad": folder})
    assert "finite" in str(caught.value) and "\n" not in str(caught.value)


def test_the_harness_records_the_checksums_every_load_compares(tmp_path: Path) -> None:
    from transformers import TrainingArguments

    from ina.foundation import harness

    model = get_peft_model(build("mlp"), InAConfig(r=4, target_modules=["lin0"], inhibition=0.3))
    randomize_adapters(model)
    arguments = TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    trainer = harness.build_trainer(model, arguments, train_dataset=[{"X": torch.zeros(10)}])
    checks = harness.save_adapter(trainer, verify=False)
    folder = tmp_path / "run"
    assert checks[CHECKSUM_KEY] == adapter_checksums(folder)
    harness.record(folder, checks, "training_summary.json")
    check_adapter_folder(folder)
    _edit_tensors(folder, lambda tensors: tensors[_first_lora(tensors)].mul_(2))
    with pytest.raises(AdapterFileError, match="sha256 must match"):
        check_adapter_folder(folder)
