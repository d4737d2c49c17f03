"""What the command line reads: adapter specs and folders, prompt files, devices and hub ids.

Each is answered the same way by every command that reads it: one line, exit code 2, naming the flag.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ina.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    from ina.testing import tiny_files

    return tiny_files(tmp_path_factory.mktemp("cli-inputs"))


def _error(argv: list[str], capfd: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of ``ina ARGV``, which must end with exit code 2."""
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_bare_adapter_path_is_the_adapter_named_after_its_folder(
    files: tuple[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--adapter PATH` (also `.`: the folder one stands in) runs that adapter, never the base alone."""
    base, adapters = files
    for value, cwd in ((adapters["ina03"], tmp_path), (".", Path(adapters["ina03"]))):
        monkeypatch.chdir(cwd)
        out = tmp_path / f"answers-{len(value)}.jsonl"
        argv = ["generate", "hi", "--adapter", value, "--base_model", base, "--compare_base"]
        assert main([*argv, "--max_new_tokens", "4", "--output", str(out)]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [row["adapter"] for row in rows] == [None, "ina03"]
        assert rows[0]["output"] != rows[1]["output"]  # the adapter ran


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "hi"],
        ["viz", "attention", "--text", "hi", "--out", "OUT"],
        ["viz", "inhibition", "--text", "hi", "--out", "OUT"],
        ["eval", "--output_dir", "OUT"],
        ["bench", "serve"],
        ["serve"],  # serve needs NAME=PATH (the model id clients ask for): refused, with the same example
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_bare_adapter_path_whose_folder_cannot_name_it(
    command: list[str],
    files: tuple[str, dict[str, str]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`runs/ina-0.3` cannot name an adapter (PEFT refuses dots): every command says to name it, with a name."""
    base, adapters = files
    folder = shutil.copytree(adapters["ina03"], tmp_path / "ina-0.3")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [str(work / "out") if token == "OUT" else token for token in command]
    line = _error([*argv, "--base_model", base, "--adapter", str(folder)], capfd)
    assert f"--adapter ina-0_3={folder}" in line, line
    assert os.listdir(work) == []


def test_missing_adapter_folder_reads_the_same_in_every_command(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "no-such-run")
    info = _error(["info", missing], capfd)
    generate = _error(["generate", "hi", "--adapter", f"a={missing}"], capfd)
    convert = _error(["convert", missing, str(tmp_path / "out")], capfd)
    assert info.startswith(f"ina info: error: PATH {missing!r}: no such folder;")
    assert generate.startswith(f"ina generate: error: --adapter 'a={missing}': no such folder;")
    tails = {line.split(": no such folder", 1)[1] for line in (info, generate, convert)}
    assert len(tails) == 1, tails


@pytest.mark.parametrize(
    ("name", "text", "where", "problem"),
    [
        (
            "array.json",
            '[\n  {"instruction": "one"},\n  {"input": "no instruction"}\n]\n',
            3,
            "`instruction`",
        ),
        ("array-input.json", '[{"instruction": "one"},\n {"instruction": "two", "input": 2}]', 2, "`input`"),
        ("broken.json", '[{"instruction": "one"},\n {"instruction": }]', 2, "invalid JSON"),
        ("lines.jsonl", '{"instruction": "one"}\n\n{"prompt": ""}\n', 3, "`instruction`"),
        ("broken.jsonl", '{"instruction": "one"}\n{"instruction": two}\n', 2, "invalid JSON"),
    ],
)
def test_prompts_file_errors_name_the_file_and_line(
    name: str, text: str, where: int, problem: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """One format, `--prompts_file FILE:LINE: what is wrong; fix`; a .json array's records by their line."""
    path = tmp_path / name
    path.write_text(text)
    line = _error(["generate", "--prompts_file", str(path)], capfd)
    assert line.startswith(f"ina generate: error: --prompts_file {path}:{where}: "), line
    assert problem in line and "; " in line.split(f":{where}: ", 1)[1], line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--base_model", "BASE"],
        ["viz", "attention", "--base_model", "BASE", "--text", "hi", "--out", "OUT"],
        ["viz", "inhibition", "--base_model", "BASE", "--adapter", "ADAPTER", "--text", "hi", "--out", "OUT"],
        ["eval", "--base_model", "BASE", "--output_dir", "OUT"],
        ["export", "lora", "ADAPTER", "OUT", "--base_model", "BASE"],
        ["bench", "--model", "BASE", "--steps", "1", "--warmup", "0"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_device_cuda_without_cuda(
    command: list[str],
    files: tuple[str, dict[str, str]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's case, `--device cuda` on a CPU-only machine, for every command with a device flag."""
    base, adapters = files
    monkeypatch.chdir(tmp_path)
    names = {"BASE": base, "ADAPTER": adapters["ina03"], "OUT": str(tmp_path / "out")}
    line = _error([names.get(token, token) for token in command] + ["--device", "cuda"], capfd)
    assert "--device" in line and "cuda" in line and "Traceback" not in line, line
    assert os.listdir(tmp_path) == []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_hub_id_fails_fast_when_the_hub_is_unreachable(
    files: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """Without HF_HUB_OFFLINE, a hub that does not answer costs no retries: a cached copy loads, a missing one
    is the one-line error at once (huggingface_hub alone retried each file for about a minute).

    The real hub where this machine has no route to it (as on the build machine: its name does not
    resolve), else a closed port on this machine standing in for it.
    """
    from ina.foundation.models import hub_reachable

    base, _ = files
    revision = "0" * 40
    repository = tmp_path / "cache" / "models--ina-test--tiny-llama"
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(revision)
    shutil.copytree(base, repository / "snapshots" / revision)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and k != "HF_ENDPOINT"}
    env["HF_HUB_CACHE"] = str(tmp_path / "cache")
    if hub_reachable():
        env |= {
            "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
            "NO_PROXY": "127.0.0.1",
            "no_proxy": "127.0.0.1",
        }
    script = (
        "import sys\n"
        "from ina.cli import main\n"
        "common = ['generate', 'hi', '--no_stream', '--max_new_tokens', '2']\n"
        "print('cached', main([*common, '--base_model', 'ina-test/tiny-llama']))\n"
        "print('missing', main([*common, '--base_model', 'ina-test/missing']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert "cached 0" in done.stdout and "missing 2" in done.stdout, done.stdout + done.stderr
    assert "Retrying" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ina generate: error: --base_model 'ina-test/missing': not a local folder, and the Hugging Face hub is "
        "unreachable (HF_HUB_OFFLINE=1, or no network) with no cached copy of it; download it once online "
        "(`hf download ina-test/missing`), or give a model folder (config.json, weights, tokenizer files), or "
        "`minilm` / `smollm` (embedded, offline)"
    ]
