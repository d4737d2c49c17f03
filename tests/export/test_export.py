"""`ina export lora` on a tiny real LLaMA: exact for ρ = 0, recovers a known linear target, refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ina.export.export import REPORT_FILE, export_lora
from ina.export.options import ExportOptions
from ina.foundation.errors import UsageError
from tests.export.conftest import make_adapter

QUICK = {"calibration_tokens": 3000, "heldout_tokens": 600, "prompts": 3, "max_new_tokens": 4}


def _export(src: Path, dst: Path, calibration: str, **kwargs) -> dict:
    return export_lora(
        ExportOptions(src=str(src), dst=str(dst), calibration=calibration, **{**QUICK, **kwargs})
    )


def _factors(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    names = sorted(k[: -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight"))
    return {n: (tensors[f"{n}.lora_A.weight"], tensors[f"{n}.lora_B.weight"]) for n in names}


def test_rho_zero_is_exported_exactly(tmp_path, tiny_base, calibration_file) -> None:
    src = make_adapter(tiny_base, tmp_path / "lora-like", inhibition=0.0)
    report = _export(src, tmp_path / "out", calibration_file)
    assert report["export"]["exact"] is True
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == ["o_proj", "q_proj", "v_proj"]
    theirs, ours = _factors(src), _factors(tmp_path / "out")
    assert theirs.keys() == ours.keys() and len(ours) == 6
    for name in ours:
        assert torch.equal(theirs[name][0], ours[name][0]) and torch.equal(theirs[name][1], ours[name][1])
    pair = report["next_token"]["all"]["ina_vs_export"]
    assert pair["top1_agreement"] == 1.0 and pair["mean_kl"] < 1e-9
    assert report["layers_summary"]["heldout_relative_error_max"] < 1e-10


def test_a_known_linear_target_is_recovered(tmp_path, tiny_base, calibration_file) -> None:
    # ρ = 0.3 with the gate running, but B's rows sum to zero and f = identity: Δ = s·B·A·x exactly.
    src = make_adapter(
        tiny_base, tmp_path / "linear", inhibition=0.3, activation="identity", linear_gate=True
    )
    report = _export(src, tmp_path / "out", calibration_file)
    assert report["export"]["exact"] is False  # it went through capture and fit, not a copy
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"]  # scaling 1: the factors carry the map
    truth, fitted = _factors(src), _factors(tmp_path / "out")
    for name, (A, B) in fitted.items():
        expected = 2.0 * truth[name][1] @ truth[name][0]  # s = 8 / 4
        assert torch.allclose(B @ A, expected, atol=1e-4 * float(expected.abs().max())), name
    assert report["layers_summary"]["heldout_relative_error_max"] < 1e-8
    pair = report["next_token"]["all"]["ina_vs_export"]
    assert pair["top1_agreement"] == 1.0 and pair["mean_kl"] < 1e-6
    assert report["answers"]["same_as_ina"]["export"] == 1.0


def test_a_gated_adapter_gets_a_measured_approximation(gated_export) -> None:
    _, dst, report = gated_export
    saved = json.loads((dst / REPORT_FILE).read_text())
    assert saved["export"]["r"] == report["export"]["r"] == 2
    assert all(A.shape[0] == 2 for A, _ in _factors(dst).values())
    layers = saved["layers"]
    assert len(layers) == 6 and all(0 < row["heldout_relative_error"] < 1 for row in layers)
    export, base = (saved["next_token"]["all"][f"ina_vs_{o}"] for o in ("export", "base"))
    assert export["mean_kl"] < base["mean_kl"]  # closer to InA than the base is
    assert saved["calibration"]["fit_tokens"] >= 3000 and saved["calibration"]["heldout_tokens"] >= 600
    assert len(saved["prompts"]) == 3 and {"ina", "export", "base", "reference"} <= saved["prompts"][0].keys()
    assert (dst / "adapter_model.safetensors").stat().st_mode & 0o044  # readable like any file


def test_min_agreement_refuses_and_writes_nothing(tmp_path, tiny_base, calibration_file) -> None:
    src = make_adapter(tiny_base, tmp_path / "ina", inhibition=0.9, seed=3)
    with pytest.raises(UsageError, match="--min_agreement"):
        _export(src, tmp_path / "out", calibration_file, rank=1, min_agreement=1.0, prompts=0)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ina"]  # no staging folder left behind


def test_bad_input_is_one_line_exit_2(tmp_path, tiny_base, calibration_file, capsys) -> None:
    from ina.cli import main

    src = make_adapter(tiny_base, tmp_path / "ina", inhibition=0.3)
    (tmp_path / "taken").mkdir()
    capsys.readouterr()
    cases = [
        ([str(src), str(tmp_path / "taken")], "--overwrite"),
        ([str(tmp_path / "nothing"), str(tmp_path / "new")], "SRC"),
        ([str(src), str(tmp_path / "new"), "--rank", "9"], "--rank must be at most"),
        ([str(src), str(tmp_path / "new"), "--min_agreement", "2"], "--min_agreement must be in [0, 1]"),
        ([str(src), str(tmp_path / "new"), "--calibration", str(tmp_path / "none.json")], "--calibration"),
    ]
    for argv, needle in cases:
        assert main(["export", "lora", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "new").exists()


def test_overwrite_replaces_only_an_earlier_export(tmp_path, tiny_base, calibration_file) -> None:
    """--overwrite replaces an export; a folder holding anything else, or holding SRC, is never touched."""
    src = make_adapter(tiny_base, tmp_path / "nest" / "ad", inhibition=0.0)
    (tmp_path / "nest" / "notes.txt").write_text("mine\n")
    first = _export(src, tmp_path / "out", calibration_file, prompts=0)
    again = _export(src, tmp_path / "out", calibration_file, prompts=0, overwrite=True)
    assert first["export"] == again["export"] and (tmp_path / "out" / REPORT_FILE).is_file()
    (tmp_path / "out" / "notes.txt").write_text("mine too\n")
    with pytest.raises(UsageError, match=r"--overwrite replaces only an earlier export.*'notes.txt'"):
        _export(src, tmp_path / "out", calibration_file, prompts=0, overwrite=True)
    with pytest.raises(UsageError, match="holds SRC"):
        _export(src, tmp_path / "nest", calibration_file, prompts=0, overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine too\n"
    assert sorted(p.name for p in (tmp_path / "nest").iterdir()) == ["ad", "notes.txt"]
    assert (src / "adapter_model.safetensors").is_file()
