"""The end of `ina finetune`: every held-out answer recorded, a short console report, where it wrote."""

from __future__ import annotations

from ina.finetune.arguments import FinetuneArguments
from ina.finetune.report import format_report


def _summary(examples: int) -> dict:
    return {
        "examples": [
            {"location": f"d.json:{i}", "instruction": f"q{i}", "input": "", "reference": "r", "base": "b",
             "finetuned": "f"}
            for i in range(examples)
        ],
        "val_loss_base": 3.0, "val_loss_finetuned": 2.0, "adapter": "/out", "global_step": 24,
        "prompt_template": "chat",
    }  # fmt: skip


def test_the_report_prints_a_few_answers_and_says_where_all_are() -> None:
    text = format_report(_summary(16), shown=3)
    assert text.count("=== held-out prompt") == 3 and "q2" in text and "q3" not in text
    assert len(text.splitlines()) < 25
    assert text.splitlines()[-1] == (
        "wrote the adapter (step 24, template 'chat'), training_summary.json (with 16 held-out answers, base "
        "and fine-tuned) and loss_curve.png to /out"
    )
    assert "=== held-out" not in format_report(_summary(16), shown=0)


def test_answered_examples_cover_printing_and_recording() -> None:
    assert FinetuneArguments().answered_examples() == 16  # the demo's whole validation set
    assert FinetuneArguments(show_examples=20, record_examples=4).answered_examples() == 20
    assert FinetuneArguments(record_examples=-1).answered_examples() == -1
    assert FinetuneArguments(show_examples=0, record_examples=0).answered_examples() == 0
