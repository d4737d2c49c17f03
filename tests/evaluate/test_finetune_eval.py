"""`ina finetune --eval`: the new adapter is evaluated against its base by `ina eval`, in a process of its own."""

from __future__ import annotations

import json

import pytest

from ina.cli import main
from ina.testing import tiny_model, tiny_tokenizer


@pytest.mark.slow
def test_finetune_eval_writes_a_table_of_the_new_adapter_against_its_base(tmp_path) -> None:
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    records = [
        {"instruction": "Is this review positive or negative?", "input": f"film {i}", "output": "positive"}
        for i in range(12)
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "run"
    argv = ["finetune", "--base_model", str(base), "--data_path", str(data), "--output_dir", str(out)]
    argv += ["--batch_size", "4", "--micro_batch_size", "4", "--val_set_size", "2", "--show_examples", "0"]
    argv += ["--max_steps", "1", "--lora_target_modules", "q_proj,v_proj", "--disable_tqdm", "true"]
    assert main([*argv, "--eval", "--eval_limit", "4"]) == 0
    results = json.loads((out / "eval" / "eval_results.json").read_text(encoding="utf-8"))
    assert list(results["results"]) == ["base", "finetuned"]
    assert results["adapters"] == {"finetuned": str(out)}
    assert results["results"]["finetuned"]["ina_sentiment_en"]["acc"]["samples"] == 4
    assert (out / "eval" / "eval_results.md").is_file()
