"""Progress of long runs: periodic one-line progress with an ETA in a log file, a bar on a terminal, and
the long commands (training, `ina export lora`, `ina eval`) showing it when their output goes to a file."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

LOOP = """
import time
import ina_cli  # noqa: F401  (ina without the frameworks: a quick process)
from ina.foundation.progress import progress
for _ in progress(range(12), desc="fitting", unit="batch"):
    time.sleep(0.1)
for _ in progress(range(2), desc="quick"):
    pass
print("end", flush=True)
"""
RATE = r"[\d.]+ (?:s/batch|batch/s)"
LINE = re.compile(rf"^fitting: batch (\d+)/12 \(\d+%\), (\d\d:\d\d) elapsed, ETA \d\d:\d\d, {RATE}$")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(argv: list[str], log: Path, seconds: str, timeout: int = 300) -> str:
    env = {**os.environ, **ENV, "INA_PROGRESS_SECONDS": seconds, "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as file:  # stdout and stderr to a file, as `cmd > log 2>&1` does
        done = subprocess.run(argv, stdout=file, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def test_a_log_file_gets_a_line_per_interval_with_an_eta(tmp_path: Path) -> None:
    text = _run([sys.executable, "-c", LOOP], tmp_path / "log.txt", "0.35")
    assert "\r" not in text and "\x1b" not in text  # plain lines, no redrawn bar
    lines = text.splitlines()
    progress = [line for line in lines if LINE.match(line)]
    # 1.2 s of work, a line at most every 0.35 s (the first after 0.35 s), then the last one
    assert 2 <= len(progress) <= 4, lines
    steps = [int(LINE.match(line).group(1)) for line in progress]  # type: ignore[union-attr]
    assert steps == sorted(steps) and 0 < steps[0] < 12
    assert re.fullmatch(rf"fitting: batch 12/12 \(100%\), done in \d\d:\d\d, {RATE}", lines[-2])
    assert lines[-1] == "end"  # the quick loop, shorter than the interval, wrote nothing
    assert not [line for line in lines if line.startswith("quick")]


def test_a_terminal_gets_a_bar(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    env = {**os.environ, "INA_PROGRESS_SECONDS": "0.35"}
    done = subprocess.run(
        [sys.executable, "-c", LOOP], stdout=subprocess.PIPE, stderr=follower, env=env, timeout=120
    )
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert done.returncode == 0
    assert b"\r" in drawn and b"12/12" in drawn and b"|" in drawn  # tqdm's bar, redrawn in place
    assert b"ETA" not in drawn


def test_an_unusable_interval_is_named() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOOP],
        capture_output=True,
        text=True,
        env={**os.environ, "INA_PROGRESS_SECONDS": "soon"},
    )
    assert done.returncode != 0 and "INA_PROGRESS_SECONDS must be a number of seconds" in done.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ina.testing import save_demo_adapter, tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("progress")
    base, encoder = root / "tiny-llama", root / "tiny-bert"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    tiny_model("bert", head="seq-cls").save_pretrained(encoder)
    tiny_tokenizer().save_pretrained(encoder)
    save_demo_adapter(base, root / "adapter", 0.3, 1, ["q_proj", "v_proj"])
    rng = random.Random(0)
    words = ["good", "bad", "film", "dull", "fun", "plot", "actor", "scene"]
    rows = ["sentence,label"] + [f"the {rng.choice(words)} {rng.choice(words)},{i % 2}" for i in range(24)]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    records = [
        {"instruction": " ".join(rng.choices(words, k=6)), "output": rng.choice(words)} for _ in range(200)
    ]
    (root / "calibration.json").write_text(json.dumps(records))
    return {"root": root, "base": base, "encoder": encoder, "adapter": root / "adapter"}


def _ina(*argv: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from ina_cli import main; sys.exit(main())", *argv]


def test_training_in_a_log_file_shows_steps_with_an_eta_and_where_it_wrote(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    out, train = tmp_path / "glue", tiny["root"] / "train.csv"
    argv = _ina(
        "glue",
        "--task_name",
        "sst2",
        "--model_name_or_path",
        str(tiny["encoder"]),
        "--train_file",
        str(train),
    )
    argv += ["--validation_file", str(train), "--output_dir", str(out), "--num_train_epochs", "2"]
    argv += ["--per_device_train_batch_size", "4", "--torch_threads", "1"]
    lines = _run(argv, tmp_path / "log.txt", "0").splitlines()
    steps = [
        line for line in lines if re.match(r"training: step \d+/12 \(\d+%\), \d\d:\d\d elapsed, ETA ", line)
    ]
    assert len(steps) >= 10, lines  # one per step at interval 0
    assert any(line.startswith("training: step 12/12 (100%), done in ") for line in lines)
    assert "Setting accelerator to CPU" not in "\n".join(lines)
    assert (
        lines[-1]
        == f"wrote {'the adapter with its classifier head'}, eval_results.json, trainer_state.json and result.json to {out.resolve()}"
    )


def test_export_and_eval_in_a_log_file_show_their_passes(tiny: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "lora"
    argv = _ina("export", "lora", str(tiny["adapter"]), str(dst), "--base_model", str(tiny["base"]))
    argv += ["--calibration", str(tiny["root"] / "calibration.json"), "--calibration_tokens", "2000"]
    argv += ["--heldout_tokens", "400", "--prompts", "0"]
    lines = _run(argv, tmp_path / "export.txt", "0").splitlines()
    assert any(
        re.match(r"fitting \(reading the adapted layers\): batch \d+/\d+ .*ETA ", line) for line in lines
    )
    assert any(re.match(r"measuring \(InA, export, base\): batch \d+/\d+ .*ETA ", line) for line in lines)
    assert lines[-1].startswith(f"wrote {dst}")

    out = tmp_path / "eval"
    argv = _ina("eval", "--base_model", str(tiny["base"]), "--adapter", f"ina={tiny['adapter']}")
    argv += ["--tasks", "ina_sentiment_en", "--limit", "4", "--output_dir", str(out), "--torch_threads", "1"]
    lines = _run(argv, tmp_path / "eval.txt", "0").splitlines()
    requests = [line for line in lines if re.match(r"Running \w+ requests: \d+/\d+ \(\d+%\), .*ETA ", line)]
    assert len(requests) >= 4, lines  # base and adapter, several requests each
    assert lines[-1].startswith("wrote ") and str(out) in lines[-1]
