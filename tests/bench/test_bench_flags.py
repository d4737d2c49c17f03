"""`ina bench` flags: generated from the settings dataclasses, snake case first, kebab spellings kept."""

import json
import subprocess
import sys

import pytest

from ina.cli import build_parser, main

# Every flag `ina bench --help` and `python -m ina.serve.bench --help` listed before the benchmarks shared a room.
TRAINING_FLAGS = [
    "--preset",
    "--model",
    "--targets",
    "--steps",
    "--warmup",
    "--batch",
    "--seq",
    "--dtype",
    "--adapter-dtype",
    "--device",
    "--compile",
    "--decode",
    "--decode-tokens",
    "--decode-rounds",
    "--r",
    "--lora-alpha",
    "--dropout",
    "--inhibition",
    "--variants",
    "--seed",
    "--threads",
    "--json",
]
SERVING_FLAGS = [
    "--url",
    "--base_model",
    "--tiny",
    "--adapter",
    "--api_key",
    "--concurrency",
    "--requests_per_client",
    "--max_tokens",
    "--num_threads",
    "--json",
]


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().out


def test_training_help_lists_every_flag_in_snake_and_kebab_case(capsys):
    text = _help(["bench", "--help"], capsys)
    for flag in TRAINING_FLAGS:
        assert f"{flag} " in text, flag
        assert "--" + flag[2:].replace("-", "_") + " " in text, flag
    assert "serve" in text


@pytest.mark.parametrize("argv", [["bench", "serve", "--help"], ["bench", "serve", "-h"]])
def test_serving_help_lists_every_flag(argv, capsys):
    text = _help(argv, capsys)
    for flag in SERVING_FLAGS:
        assert f"{flag} " in text, flag


def test_kebab_and_snake_spellings_parse_alike():
    parser = build_parser("bench")
    kebab = [
        "--adapter-dtype",
        "float32",
        "--decode-tokens",
        "5",
        "--decode-rounds",
        "2",
        "--lora-alpha",
        "4",
    ]
    snake = [
        "--adapter_dtype",
        "float32",
        "--decode_tokens",
        "5",
        "--decode_rounds",
        "2",
        "--lora_alpha",
        "4",
    ]
    assert vars(parser.parse_args(["bench", *kebab])) == vars(parser.parse_args(["bench", *snake]))
    args = parser.parse_args(["bench", "--variants", "base, lora", "--dropout", "0"])
    assert args.variants == ["base", "lora"] and args.lora_dropout == 0.0 and args.benchmark is None


def test_serve_subcommand_parses_its_own_flags():
    args = build_parser("bench").parse_args(
        ["bench", "serve", "--tiny", "--adapter", "a=x", "--adapter", "b=y", "--concurrency", "1", "2"]
    )
    assert args.benchmark == "serve" and args.tiny and args.adapters == ["a=x", "b=y"]
    assert args.concurrency == [1, 2]


def test_cli_imports_no_framework():
    code = (
        "import sys, ina_cli, ina.bench.cli; "
        "print(json.dumps([m for m in ('torch', 'transformers', 'peft', 'numpy', 'httpx') if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_serving_benchmark_keeps_the_flags_of_python_m_ina_serve_bench():
    command = "import sys, ina_cli; sys.exit(ina_cli.main(['bench', 'serve', '--help']))"
    text = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, check=True).stdout
    for flag in SERVING_FLAGS:
        assert f"{flag} " in text, flag
