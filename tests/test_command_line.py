"""The `ina` command line: every command answers --help without a framework, with the flags it always had."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Each command's flags as its --help listed them before the house was rebuilt (aliases may be added, none removed;
# `ina finetune --help` no longer recommends TrainingArguments' deprecated --gradient_checkpointing, still accepted).
FLAGS: list[tuple[list[str], list[str]]] = [
    ([], ["--version"]),
    (["convert"], []),
    (["info"], []),
    (
        ["glue"],
        [
            "--activation",
            "--data_dir",
            "--dataset_name",
            "--ignore_mismatched_sizes",
            "--inhibition",
            "--lora_alpha",
            "--lora_dropout",
            "--lora_r",
            "--lora_target_modules",
            "--max_eval_samples",
            "--max_seq_length",
            "--max_train_samples",
            "--model_name_or_path",
            "--modules_to_save",
            "--neutral_margin",
            "--num_train_epochs",
            "--output_dir",
            "--seed",
            "--split_seed",
            "--task",
            "--task_name",
            "--tokenizer_name",
            "--torch_threads",
            "--train_file",
            "--validation_file",
            "--validation_mismatched_file",
        ],
    ),
    (
        ["squad"],
        [
            "--activation",
            "--doc_stride",
            "--inhibition",
            "--lora_alpha",
            "--lora_dropout",
            "--lora_r",
            "--lora_target_modules",
            "--max_answer_length",
            "--max_eval_samples",
            "--max_seq_length",
            "--max_train_samples",
            "--model_name_or_path",
            "--modules_to_save",
            "--n_best_size",
            "--null_score_diff_threshold",
            "--output_dir",
            "--tokenizer_name",
            "--torch_threads",
            "--train_file",
            "--validation_file",
            "--version_2_with_negative",
        ],
    ),
    (
        ["sweep"],
        [
            "--activation",
            "--experiment",
            "--inhibition",
            "--lora_r",
            "--model_name_or_path",
            "--output_dir",
            "--seeds",
            "--task_name",
        ],
    ),
    (
        ["finetune"],
        [
            "--activation",
            "--add_eos_token",
            "--base_model",
            "--batch_size",
            "--bf16",
            "--config",
            "--cutoff_len",
            "--data_dir",
            "--data_path",
            "--deepspeed",
            "--dtype",
            "--example_max_new_tokens",
            "--fsdp",
            "--group_by_length",
            "--inhibition",
            "--learning_rate",
            "--load_in_4bit",
            "--load_in_8bit",
            "--lora_alpha",
            "--lora_dropout",
            "--lora_r",
            "--lora_target_modules",
            "--max_records",
            "--max_steps",
            "--micro_batch_size",
            "--num_epochs",
            "--output_dir",
            "--prompt_template_name",
            "--report_to",
            "--resume_from_checkpoint",
            "--seed",
            "--show_examples",
            "--skip_bad_records",
            "--threshold_ratio_inhi",
            "--train_on_inputs",
            "--trust_remote_code",
            "--val_set_size",
        ],
    ),
    (
        ["generate"],
        [
            "--adapter",
            "--base_model",
            "--batch_size",
            "--compare_base",
            "--input",
            "--max_new_tokens",
            "--no_stream",
            "--num_beams",
            "--output",
            "--prompt_template_name",
            "--prompts_file",
            "--repetition_penalty",
            "--seed",
            "--temperature",
            "--top_k",
            "--top_p",
        ],
    ),
    (
        ["serve"],
        [
            "--adapter",
            "--api_key",
            "--base_model",
            "--base_model_id",
            "--batch_window_ms",
            "--device",
            "--dtype",
            "--host",
            "--log_level",
            "--max_batch_size",
            "--max_body_bytes",
            "--max_queue",
            "--max_tokens_cap",
            "--num_threads",
            "--port",
        ],
    ),
    (
        ["bench"],
        [
            "--adapter-dtype",
            "--batch",
            "--compile",
            "--decode",
            "--decode-rounds",
            "--decode-tokens",
            "--device",
            "--dropout",
            "--dtype",
            "--inhibition",
            "--json",
            "--lora-alpha",
            "--model",
            "--preset",
            "--r",
            "--seed",
            "--seq",
            "--steps",
            "--targets",
            "--threads",
            "--variants",
            "--warmup",
        ],
    ),
    (
        ["bench", "serve"],
        [
            "--adapter",
            "--api_key",
            "--base_model",
            "--concurrency",
            "--json",
            "--max_tokens",
            "--num_threads",
            "--requests_per_client",
            "--tiny",
            "--url",
        ],
    ),
    (["viz"], []),
    (
        ["viz", "attention"],
        ["--adapter", "--base_model", "--device", "--dtype", "--layers", "--out", "--text", "--text_pair"],
    ),
    (
        ["viz", "inhibition"],
        [
            "--adapter",
            "--base_model",
            "--data",
            "--device",
            "--dtype",
            "--max_texts",
            "--out",
            "--text",
            "--text_pair",
        ],
    ),
    (["viz", "curves"], ["--out"]),
    (["eval"], ["--adapter", "--base_model", "--include_path", "--limit", "--output_dir", "--tasks"]),
    (["export"], []),
    (
        ["export", "lora"],
        ["--calibration", "--calibration_tokens", "--format", "--min_agreement", "--overwrite", "--rank"],
    ),
]

FRAMEWORKS = ("torch", "transformers", "peft", "numpy", "fastapi", "matplotlib")


def _help(argv: list[str]) -> tuple[str, list[str]]:
    """--help of ``ina ARGV`` in a fresh interpreter, and the frameworks that were imported to print it."""
    script = (
        "import contextlib, io, sys\n"
        "import ina_cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        f"    ina_cli.main({[*argv, '--help']!r})\n"
        f"print(out.getvalue())\n"
        f"print('IMPORTED', [m for m in {FRAMEWORKS!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text, _, imported = done.stdout.rpartition("IMPORTED ")
    return text, eval(imported)


@pytest.mark.parametrize(("argv", "flags"), FLAGS, ids=[" ".join(argv) or "ina" for argv, _ in FLAGS])
def test_help_lists_every_flag_without_importing_a_framework(argv: list[str], flags: list[str]) -> None:
    text, imported = _help(argv)
    assert imported == [], f"ina {' '.join(argv)} --help imported {imported}"
    missing = [flag for flag in flags if flag not in text]
    assert not missing, f"ina {' '.join(argv)} --help lost {missing}"


def test_usage_error_is_one_line_and_exit_code_2(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ina_cli; sys.exit(ina_cli.main(sys.argv[1:]))",
            "info",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("ina info: ") and "adapter_config.json" in done.stderr


def test_import_ina_registers_with_peft_before_peft_is_imported() -> None:
    script = (
        "import ina\n"
        "from peft import PeftConfig\n"
        "from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as m\n"
        "print(m['INA'].__name__, ina.InAConfig.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["InAConfig", "InAConfig"]


def test_python_m_ina_help_imports_no_framework() -> None:
    """`python -m ina --help` (torchrun's way in: `torchrun -m ina finetune ...`) answers as `ina --help` does."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ina", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ina")
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert not imported & set(FRAMEWORKS), sorted(imported & set(FRAMEWORKS))


@pytest.mark.parametrize(
    ("orig_argv", "argv0", "module"),
    [
        (["python", "-m", "ina", "--help"], "-m", "ina"),
        (["python", "-u", "-m", "ina", "finetune"], "-m", "ina"),  # what torchrun starts
        (["python", "-um", "ina"], "-m", "ina"),
        (["python", "-X", "importtime", "-W", "error", "-mina.__main__"], "-m", "ina.__main__"),
        (["python", "-m", "mypackage", "ina"], "-m", "mypackage"),  # a package of the user's that imports ina
        (["python", "-c", "import ina", "-m", "ina"], "-c", None),
        (["python", "script.py", "-m", "ina"], "script.py", None),
        (["python", "-m", "ina"], "/path/to/ina/__main__.py", None),  # after the search: registered as usual
    ],
)
def test_only_python_m_ina_defers_the_core(
    orig_argv: list[str], argv0: str, module: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`import ina` registers InA with PEFT at once except while Python locates `python -m ina`'s __main__
    (sys.argv[0] is "-m" only then)."""
    import ina

    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    monkeypatch.setattr(sys, "argv", [argv0])
    assert ina._main_module() == module
