"""`ina eval`: lm-eval scores InA adapters through InA's gate, ina's offline tasks run, bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ina.cli import main
from ina.testing import save_demo_adapter, tiny_model, tiny_tokenizer

PAIRS = [
    ("Is the following movie review positive or negative?\n\nA quick brown fox.", " positive"),
    ("这个产品很好，我很喜欢。判断下面评论的情感：", "正面"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A tiny LLaMA folder and an InA adapter with a strong gate (ρ = 0.9) and non-zero B."""
    root = tmp_path_factory.mktemp("tiny")
    base = root / "base"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    save_demo_adapter(base, root / "ina", inhibition=0.9, seed=1, targets=["q_proj", "v_proj"])
    return str(base), str(root / "ina")


def _scores(lm, pairs: list[tuple[str, str]]) -> torch.Tensor:
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=index)
        for index, pair in enumerate(pairs)
    ]
    return torch.tensor([loglikelihood for loglikelihood, _ in lm.loglikelihood(requests, disable_tqdm=True)])


def _by_hand(model, lm, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """The continuation's log-likelihood computed from ``model``'s logits, on lm-eval's own token split."""
    totals = []
    for context, continuation in pairs:
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        ids = torch.tensor([context_ids + continuation_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        positions = range(len(context_ids) - 1, ids.shape[1] - 1)
        totals.append(sum(logprobs[p, ids[0, p + 1]].item() for p in positions))
    return torch.tensor(totals)


def test_lm_eval_scores_an_ina_adapter_with_the_gate_not_as_plain_lora(tiny: tuple[str, str]) -> None:
    from lm_eval.models.huggingface import HFLM
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ina.core.loading import load_adapter
    from ina.foundation.adapters import BASE_ADAPTER, using_adapter
    from ina.foundation.models import load_with_adapters

    base, adapter = tiny
    model, tokenizer = load_with_adapters(base, {"ina": adapter})
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, backend="causal")
    with using_adapter(model, "ina"):
        scored = _scores(lm, PAIRS)
    with using_adapter(model, BASE_ADAPTER):
        scored_base = _scores(lm, PAIRS)

    reference = load_adapter(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    ina = _by_hand(reference, lm, PAIRS)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    ).eval()
    set_peft_model_state_dict(lora, load_file(Path(adapter) / "adapter_model.safetensors"))
    plain = _by_hand(lora, lm, PAIRS)

    torch.testing.assert_close(scored, ina.to(scored.dtype), atol=1e-4, rtol=1e-5)
    assert (scored - plain).abs().min() > 1e-3, "lm-eval scored the adapter as plain LoRA"
    assert (scored - scored_base).abs().min() > 1e-3, "the adapter was not active"
    # lm-eval's own `peft=` route reads the InA adapter too (ina imported, so PEFT knows "INA")
    via_path = HFLM(pretrained=base, tokenizer=tokenizer, peft=adapter, batch_size=2, device="cpu")
    torch.testing.assert_close(_scores(via_path, PAIRS), scored, atol=1e-4, rtol=1e-5)


def test_ina_eval_runs_offline_tasks_on_the_tiny_model_with_an_adapter(
    tiny: tuple[str, str], tmp_path, capsys
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, adapter = tiny
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"])
    )
    lora.save_pretrained(tmp_path / "lora")  # a plain PEFT LoRA adapter (B = 0: scores as the base)
    out = tmp_path / "eval"
    argv = ["eval", "--base_model", base, "--adapter", f"ina90={adapter}", "--output_dir", str(out)]
    argv += ["--adapter", f"lora8={tmp_path / 'lora'}"]
    argv += ["--tasks", "ina_sentiment_zh,ina_instructions", "--limit", "6", "--torch_threads", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert list(results["results"]) == ["base", "ina90", "lora8"]
    assert results["settings"]["apply_chat_template"] is True  # ina's tasks, a tokenizer with a chat template
    for row in results["results"].values():
        assert 0 <= row["ina_sentiment_zh"]["acc"]["value"] <= 1
        assert row["ina_sentiment_zh"]["acc"]["samples"] == 6
        assert row["ina_instructions"]["bits_per_byte"]["value"] > 0
    bits = [row["ina_instructions"]["bits_per_byte"]["value"] for row in results["results"].values()]
    assert bits[0] != pytest.approx(bits[1]), "the adapter did not change the model's scores"
    assert bits[2] == pytest.approx(bits[0], abs=1e-6)  # LoRA's B starts at zero
    table = (out / "eval_results.md").read_text(encoding="utf-8")
    assert "| ina_instructions | bits per byte ↓ |" in table and "ina90" in table  # the README's names
    assert table.splitlines()[-1] in printed


@pytest.mark.parametrize("name", ["hellaswag", "no_such_task_xyz"])
def test_offline_a_task_that_is_not_inas_is_not_available(name: str, tmp_path, capsys) -> None:
    assert main(["eval", "--tasks", name, "--output_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert f"{name!r} is not available offline" in error
    assert "ina_sentiment_en, ina_sentiment_zh, ina_instructions" in error


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--limit", "0"], "--limit must be > 0"),
        (["--tasks", " , "], "--tasks names no task"),
        (["--adapter", "x=/no/such/adapter"], "no such folder"),
        (["--include_path", "/no/such/folder"], "--include_path '/no/such/folder' is not a folder"),
        (["--tasks", "missing.yaml"], "no such task YAML file"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(argv: list[str], expected: str, capsys) -> None:
    assert main(["eval", *argv]) == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1


@pytest.mark.slow
def test_ina_eval_on_the_embedded_smollm2_with_an_adapter(tmp_path) -> None:
    from ina.foundation.models import resolve_base_model

    base = resolve_base_model("smollm")
    save_demo_adapter(base, tmp_path / "ina", inhibition=0.3, seed=1, targets=["q_proj", "v_proj"])
    out = tmp_path / "eval"
    argv = ["eval", "--adapter", f"ina30={tmp_path / 'ina'}", "--output_dir", str(out), "--limit", "8"]
    assert main([*argv, "--torch_threads", "1"]) == 0
    results = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert Path(results["base_model"]) == Path(base)  # the base recorded in the adapter
    assert set(results["results"]["ina30"]) == {"ina_sentiment_en", "ina_sentiment_zh", "ina_instructions"}
    base_bits = results["results"]["base"]["ina_instructions"]["bits_per_byte"]["value"]
    assert 0 < base_bits < 8  # a real model: far better than a uniform guess over bytes


def test_help_imports_no_framework_and_lists_every_flag() -> None:
    script = (
        "import contextlib, io, sys, ina_cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    ina_cli.main(['eval', '--help'])\n"
        "print(out.getvalue())\n"
        "print([m for m in ('torch', 'transformers', 'peft', 'numpy', 'lm_eval', 'datasets') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    text, _, imported = done.stdout.rstrip().rpartition("\n")
    assert imported == "[]", imported
    for flag in ("--adapter", "--base_model", "--tasks", "--include_path", "--output_dir", "--limit"):
        assert flag in text
    assert "ina_sentiment_en" in text  # the offline tasks are named in the help
