"""`ina bench` end to end on the tiny preset (a smoke test of the command, not a benchmark)."""

import json

import pytest
import torch

from ina.cli import main

SMALL = ["--preset", "tiny", "--batch", "1", "--seq", "16"]


def test_bench_runs_every_variant_and_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    threads = torch.get_num_threads()
    code = main(
        ["bench", *SMALL, "--warmup", "0", "--steps", "2", "--targets", "all-linear", "--decode", "--decode-tokens", "3",
         "--decode-rounds", "1", "--json", str(path)]
    )  # fmt: skip
    assert code == 0
    assert torch.get_num_threads() == threads  # the benchmark's thread setting does not leak
    table = capsys.readouterr().out
    assert table.startswith("| variant |") and "ina-fast" in table
    report = json.loads(path.read_text())
    assert list(report["variants"]) == ["base", "lora", "ina-reference", "ina-fast"]
    assert report["environment"]["batch"] == 1 and report["environment"]["seq"] == 16
    assert report["environment"]["threads"] == 1  # the CPU default
    variants = report["variants"]
    assert variants["base"]["trainable_parameters"] == 0
    # r · (in + out) for q, k, v, o, gate, up, down of 4 layers (hidden 128, kv 64, intermediate 352)
    expected = 4 * 8 * ((128 + 128) * 2 + (128 + 64) * 2 + (128 + 352) * 3)
    for name in ("lora", "ina-reference", "ina-fast"):
        assert variants[name]["trainable_parameters"] == expected
    for name, result in variants.items():
        assert len(result["step_ms_all"]) == 2 and result["step_ms"]["median"] > 0, name
        assert result["decode_ms_per_token"]["median"] > 0, name
        assert result["saved_for_backward_bytes"] > 0, name
    assert report["ratios"]["base"]["step_vs_base"] == 1.0
    saved = {name: result["saved_for_backward_bytes"] for name, result in variants.items()}
    # adapters keep more for backward than the frozen base; with dropout, the fused path keeps no copy of x
    assert saved["lora"] > saved["base"]
    assert saved["ina-fast"] < saved["ina-reference"]


def test_bench_without_dropout_fused_path_saves_only_two_more_rank_sized_tensors(tmp_path):
    path = tmp_path / "bench.json"
    variants = "lora,ina-reference,ina-fast"
    assert (
        main(
            [
                "bench",
                *SMALL,
                "--warmup",
                "0",
                "--steps",
                "1",
                "--dropout",
                "0",
                "--variants",
                variants,
                "--json",
                str(path),
            ]
        )
        == 0
    )
    saved = {n: r["saved_for_backward_bytes"] for n, r in json.loads(path.read_text())["variants"].items()}
    assert saved["ina-fast"] < saved["ina-reference"]
    # LoRA keeps h for B's gradient; the fused path keeps g, z and the tie weights: 2 × (16 tokens × r 8 × fp32)
    # more for each of the 8 adapted layers (q_proj and v_proj of 4 layers), and nothing else
    assert saved["ina-fast"] - saved["lora"] == 8 * 2 * 16 * 8 * 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "--steps must be ≥ 1; got 0"),
        (["--variants", "base,qlora"], "--variants must be"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--inhibition", "0"], "--inhibition must be in (0, 1)"),
    ],
)
def test_bench_rejects_bad_flags_by_name(flags, message, capsys):
    assert main(["bench", *SMALL, *flags]) == 2
    assert message in capsys.readouterr().err


def test_bench_a_local_model_folder(tmp_path):
    from ina.testing import tiny_model

    folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(folder)
    path = tmp_path / "bench.json"
    argv = ["bench", "--model", str(folder), "--batch", "1", "--seq", "8", "--warmup", "0", "--steps", "1"]
    assert main([*argv, "--variants", "base,ina-fast", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["settings"]["model"] == str(folder) and report["settings"]["preset"] is None
    # tiny_model("llama"): 2 layers, hidden 32, 2 KV heads of 8; q_proj and v_proj adapted with r = 8
    assert report["variants"]["ina-fast"]["trainable_parameters"] == 2 * 8 * ((32 + 32) + (32 + 16))
