"""`ina finetune` end to end on a tiny LLaMA: seed flags, outputs, reload, config, errors, resume, generate."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from finetune_helpers import QUICK, REPO, alpaca_records, write_json, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

import ina
from ina.cli import main
from ina.finetune.arguments import FinetuneArguments
from ina.finetune.train import FinetuneError, finetune, resolve, training_arguments


class _Keep(TrainerCallback):
    """Keeps a reference to the trained model (the test compares it with the saved adapter)."""

    model: Any = None

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.model = model


@pytest.fixture(scope="module")
def trained(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short in-process run with a learning rate high enough to move the tiny model."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("trained")
    data = write_json(folder / "data.json", alpaca_records(40))
    keep = _Keep()
    arguments = FinetuneArguments(
        base_model=str(model_dir), data_path=str(data), output_dir=str(folder / "out"), batch_size=4,
        micro_batch_size=4, val_set_size=8, learning_rate=1e-2, lora_target_modules="q_proj,k_proj,v_proj,o_proj",
        show_examples=2, example_max_new_tokens=4, inhibition=0.3,
    )  # fmt: skip
    summary = finetune(
        arguments,
        ["--max_steps", "12", "--eval_steps", "6", "--logging_steps", "3", "--disable_tqdm", "true"],
        callbacks=[keep],
    )
    return {"summary": summary, "model": keep.model, "out": folder / "out", "data": data}


def test_run_writes_a_verified_adapter_summary_and_curve(trained: dict[str, Any]) -> None:
    out, summary = trained["out"], trained["summary"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "INA" and config["inhibition"] == 0.3
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 4 * 3  # 2 layers × 4 modules × (A, B, the ina_inhibition marker)
    assert all(
        t.abs().sum() > 0 for name, t in tensors.items() if "lora_B" in name
    )  # trained, not the zero init
    written = json.loads((out / "training_summary.json").read_text())
    assert written["global_step"] == summary["global_step"] == 12
    assert written["prompt_template"] == "alpaca"
    assert json.loads((out / "ina_prompt.json").read_text())["template"]["name"] == "alpaca"
    assert written["reload_max_abs_logit_diff"] == 0.0
    assert written["val_examples"] == 8 and written["train_examples"] == 32
    assert written["val_loss_finetuned"] < written["val_loss_base"]
    # every held-out prompt is recorded with both answers (2 were printed: --show_examples 2)
    assert len(written["examples"]) == written["val_examples"] == 8
    assert all(
        {"base", "finetuned", "reference", "instruction", "input"} <= set(e) for e in written["examples"]
    )
    assert len({e["location"] for e in written["examples"]}) == 8
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_saved_adapter_reloads_with_identical_logits(trained: dict[str, Any], model_dir: Path) -> None:
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 60, 70, 80, 90, 100, 110]])
    model = trained["model"].eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        reloaded = ina.load_adapter(AutoModelForCausalLM.from_pretrained(model_dir), trained["out"]).eval()
        got = reloaded(input_ids=ids).logits
    assert (expected - base).abs().max() > 1e-4  # the adapter does something
    assert torch.equal(got, expected)


def test_seed_command_line_runs_unchanged(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the seed's flags, exactly, with a local model folder and data file (`python -m ina` calls this main)
    write_json(tmp_path / "data.json", alpaca_records(24))
    monkeypatch.chdir(tmp_path)
    code = main(
        ["finetune", "--base_model", str(model_dir), "--data_dir", "data.json", "--output_dir", "out",
         "--threshold_ratio_inhi", "0.3", "--lora_target_modules", '["q_proj","v_proj"]']
    )  # fmt: skip
    assert code == 0
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["inhibition"] == 0.3 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    summary = json.loads((tmp_path / "out" / "training_summary.json").read_text())
    # alpaca-lora's defaults: batch 128 of micro-batches of 4, 3 epochs, one optimizer step per epoch here
    assert summary["effective_batch_size"] == 128 and summary["global_step"] == 3
    out = capsys.readouterr().out
    assert "validation loss: base" in out and "=== held-out prompt 1" in out


def test_config_file_is_overridden_by_flags_and_trainer_flags_pass_through(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        textwrap.dedent("""
        base_model: some/model
        threshold_ratio_inhi: 0.1
        lora_r: 4
        lora_target_modules: [q_proj, k_proj]
        max_steps: 7
        warmup_steps: 2
        bf16: false
        """)
    )
    arguments, tokens = resolve({"config": str(config), "lora_r": 2}, ["--max_steps", "5"])
    assert arguments.lora_r == 2  # flag beats file
    assert arguments.inhibition == 0.1 and arguments.target_modules() == ["q_proj", "k_proj"]
    training = training_arguments(arguments, tokens)
    assert training.max_steps == 5 and training.warmup_steps == 2
    assert training.gradient_accumulation_steps == 128 // 4

    arguments, tokens = resolve({"base_model": "m", "lora_target_modules": '["query_key_value"]'}, [])
    assert arguments.target_modules() == ["query_key_value"]
    assert training_arguments(arguments, tokens).max_steps == -1  # no quick defaults with a named model
    arguments, tokens = resolve({}, [])
    assert arguments.prompt_template_name == "chat" and training_arguments(arguments, tokens).max_steps == 24
    with pytest.raises(FinetuneError, match="unrecognized arguments: --no_such_flag"):
        training_arguments(arguments, ["--no_such_flag", "1"])


def test_invalid_options_are_all_reported(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["finetune", "--base_model", "m", "--inhibition", "1.5", "--batch_size", "6", "--micro_batch_size", "4",
                 "--lora_target_modules", "[q_proj"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2
    assert "--inhibition (--threshold_ratio_inhi) must be in [0, 1); got 1.5" in error
    assert "--batch_size (6) must be a multiple of --micro_batch_size (4)" in error
    assert "--lora_target_modules: not a JSON list" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
@pytest.mark.parametrize("flag", ["--load_in_8bit", "--load_in_4bit"])
def test_quantized_loading_explains_why_not_without_gpu(
    flag: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_json(tmp_path / "d.json", alpaca_records(4))
    code = main(
        [
            "finetune",
            "--base_model",
            str(model_dir),
            "--data_path",
            str(data),
            "--output_dir",
            str(tmp_path),
            flag,
        ]
    )
    assert code == 2
    assert (
        f"{flag} trains on a bitsandbytes-quantized base (QLoRA), which needs a CUDA GPU"
        in capsys.readouterr().err
    )


def test_bad_records_stop_the_run_unless_skipped(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records: list[Any] = alpaca_records(12)
    records[3] = {"instruction": "no answer"}
    records[7] = {"instruction": "x", "output": ""}
    data = write_jsonl(tmp_path / "d.jsonl", records)
    common = ["finetune", "--base_model", str(model_dir), "--data_path", str(data), "--output_dir", str(tmp_path / "o"),
              *QUICK, "--max_steps", "1", "--show_examples", "0"]  # fmt: skip
    assert main(common) == 2
    captured = capsys.readouterr()
    assert f"{data}:4: Alpaca record is missing the field `output`" in captured.out
    assert f"{data}:8: Alpaca field `output` is empty" in captured.out
    assert "2 malformed record(s)" in captured.err and "--skip_bad_records" in captured.err
    assert not (tmp_path / "o").exists()  # stopped before training

    assert main([*common, "--skip_bad_records"]) == 0
    assert "skipped 2 malformed record(s)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "o" / "training_summary.json").read_text())
    assert summary["records_skipped"] == 2 and summary["train_examples"] + summary["val_examples"] == 10


def test_sharegpt_and_messages_data_train_with_the_chat_template(model_dir: Path, tmp_path: Path) -> None:
    chat = [
        {
            "messages": [
                {"role": "user", "content": f"Tell me a joke {i}"},
                {"role": "assistant", "content": "a cat"},
            ]
        }
        for i in range(6)
    ]
    chat += [
        {"conversations": [{"from": "human", "value": f"Another {i}"}, {"from": "gpt", "value": "a dog"}]}
        for i in range(6)
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", chat)
    out = tmp_path / "o"
    code = main(
        [
            "finetune",
            "--base_model",
            str(model_dir),
            "--data_path",
            str(data),
            "--output_dir",
            str(out),
            *QUICK,
            "--max_steps",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["prompt_template"] == "chat" and summary["formats"] == ["messages", "sharegpt"]
    assert json.loads((out / "ina_prompt.json").read_text())["template"]["chat"] is True


_KILLED_RUN = """
import os, signal, sys, torch
from transformers import TrainerCallback
from ina.finetune.train import finetune, resolve
torch.set_num_threads(1)
class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # dies like a preempted job: no cleanup, no final save
arguments, tokens = resolve(dict(base_model=sys.argv[1], data_path=sys.argv[2], output_dir=sys.argv[3],
    batch_size=4, micro_batch_size=2, val_set_size=0, show_examples=0), sys.argv[4:])
finetune(arguments, tokens, callbacks=[Kill()])
"""


def test_resume_after_a_killed_run_reaches_the_same_step_and_weights(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import sys

    data = write_json(tmp_path / "d.json", alpaca_records(20))
    steps = [
        "--max_steps",
        "8",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        "--learning_rate",
        "5e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(model_dir), str(data), str(tmp_path / "run"), *steps],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()

    common = ["finetune", "--base_model", str(model_dir), "--data_path", str(data), "--batch_size", "4",
              "--micro_batch_size", "2", "--val_set_size", "0", "--show_examples", "0", *steps]  # fmt: skip
    assert main([*common, "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", "last"]) == 0
    resumed = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert resumed["global_step"] == 8 and resumed["resumed_from"] == "True"
    trained_steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{'loss'")]
    assert len(trained_steps) == 4  # steps 5..8 only: it continued after checkpoint-4

    assert main([*common, "--output_dir", str(tmp_path / "straight")]) == 0
    straight = json.loads((tmp_path / "straight" / "training_summary.json").read_text())
    assert straight["global_step"] == 8
    got = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    want = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6)
    # the same losses step by step: optimizer, schedule and data order were restored
    losses = {e["step"]: e["loss"] for e in resumed["log_history"] if "loss" in e}
    for entry in straight["log_history"]:
        if "loss" in entry and entry["step"] in losses:
            assert losses[entry["step"]] == pytest.approx(entry["loss"], rel=1e-4)


def test_generate_uses_the_training_template_and_several_adapters(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from ina.finetune.generate import generate_answers
    from ina.foundation.prompts import PromptTemplate

    out = str(trained["out"])
    args = ["generate", "Is this review positive or negative?", "--input", "the movie film review 5",
            "--adapter", f"a={out}", "--adapter", f"b={out}", "--compare_base", "--max_new_tokens", "6", "--no_stream"]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["adapter"] for r in rows] == [None, "a", "b"]
    assert rows[1]["output"] == rows[2]["output"]
    model = trained["model"]
    template = PromptTemplate.load("alpaca")
    base_path = json.loads((trained["out"] / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    prompt = [("Is this review positive or negative?", "the movie film review 5")]
    assert rows[1]["output"] == generate_answers(model, tokenizer, template, prompt, max_new_tokens=6)[0]
    with model.disable_adapter():
        assert rows[0]["output"] == generate_answers(model, tokenizer, template, prompt, max_new_tokens=6)[0]

    prompts_file = write_jsonl(
        trained["out"].parent / "prompts.jsonl", [{"instruction": "Tell me a joke", "input": ""}] * 3
    )
    answers_file = trained["out"].parent / "answers.jsonl"
    assert (
        main(
            [
                "generate",
                "--adapter",
                out,
                "--prompts_file",
                str(prompts_file),
                "--output",
                str(answers_file),
                "--max_new_tokens",
                "3",
            ]
        )
        == 0
    )
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    assert len(answers) == 3 and len({a["output"] for a in answers}) == 1  # greedy: same prompt, same answer


def test_generate_streams_to_the_terminal(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["generate", "Tell me a joke", "--adapter", str(trained["out"]), "--max_new_tokens", "4"]) == 0
    )
    out = capsys.readouterr().out
    assert "[out] Tell me a joke" in out


def test_repository_example_configs_parse() -> None:
    import yaml

    from ina.finetune.train import check_deepspeed_config

    folder = REPO / "examples" / "accelerate"
    for path in sorted(folder.glob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
    for path in sorted(folder.glob("ds_*.json")):
        check_deepspeed_config(str(path))  # ZeRO-3 gathers weights at save time
    arguments, tokens = resolve({"config": str(folder / "finetune.yaml"), "base_model": "m"}, [])
    assert arguments.inhibition == 0.3 and arguments.target_modules() == ["q_proj", "v_proj"]
    assert "--gradient_checkpointing" in tokens and "--eval_steps" in tokens


def test_zero3_config_without_gathering_is_refused(tmp_path: Path) -> None:
    from ina.finetune.train import check_deepspeed_config

    config = {"zero_optimization": {"stage": 3}}
    (tmp_path / "ds.json").write_text(json.dumps(config))
    with pytest.raises(FinetuneError, match="stage3_gather_16bit_weights_on_model_save: true"):
        check_deepspeed_config(str(tmp_path / "ds.json"))
    check_deepspeed_config(json.dumps({"zero_optimization": {"stage": 2}}))


def test_resume_without_a_checkpoint_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["finetune", "--base_model", "m", "--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"]
    )
    assert code == 2
    assert (
        f"--resume_from_checkpoint last: no checkpoint-* folder in --output_dir {tmp_path}"
        in capsys.readouterr().err
    )
