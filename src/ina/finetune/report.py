"""The end of a fine-tuning run: held-out answers before and after, the loss curve, the printed report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ina.foundation.prompts import Conversation, PromptTemplate


def heldout_prompt(conversation: Conversation) -> tuple[str, str]:
    """The ``(instruction, input)`` a held-out record asks (the first user turn of a conversation)."""
    if conversation.alpaca is not None:
        return conversation.alpaca["instruction"], conversation.alpaca["input"]
    user = [m["content"] for m in conversation.messages if m["role"] == "user"]
    return (user[0] if user else ""), ""


def heldout_answers(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    heldout: list[Conversation],
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Each held-out record's reference and the answers of the base (adapter off) and the fine-tuned model."""
    from ina.finetune.generate import generate_answers
    from ina.foundation.progress import progress

    prompts = [heldout_prompt(c) for c in heldout]
    model.eval()  # no dropout while answering
    answers: dict[str, list[str]] = {"base": [], "finetuned": []}
    with progress(total=2 * len(prompts), desc="answering held-out prompts", unit="answer") as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            with model.disable_adapter():
                answers["base"] += generate_answers(
                    model, tokenizer, template, chunk, max_new_tokens, batch_size
                )
            bar.update(len(chunk))
            answers["finetuned"] += generate_answers(
                model, tokenizer, template, chunk, max_new_tokens, batch_size
            )
            bar.update(len(chunk))
    return [
        {
            "location": conversation.location,
            "instruction": instruction,
            "input": input_text,
            "reference": conversation.messages[-1]["content"],
            "base": base_answer,
            "finetuned": tuned_answer,
        }
        for conversation, (instruction, input_text), base_answer, tuned_answer in zip(
            heldout, prompts, answers["base"], answers["finetuned"], strict=True
        )
    ]


def plot_losses(log_history: list[dict[str, Any]], val_before: float | None, path: Path) -> Path:
    """Training and validation loss against the optimizer step, the base model's validation loss dotted."""
    from ina.foundation.charts import loss_curves

    run = {
        "name": "",
        "train": [{"step": e["step"], "loss": e["loss"]} for e in log_history if "loss" in e],
        "eval": [{"step": e["step"], "loss": e["eval_loss"]} for e in log_history if "eval_loss" in e],
    }
    return loss_curves([run], path, title="InA fine-tuning", baseline=val_before)


def format_report(summary: dict[str, Any], shown: int = 3) -> str:
    """The end-of-run report: the first ``shown`` held-out answers before/after, the validation losses,
    and where the run wrote its files."""
    lines: list[str] = []
    for index, example in enumerate(summary["examples"][:shown], start=1):
        lines += [
            f"\n=== held-out prompt {index} ({example['location']})",
            f"instruction: {example['instruction']}",
        ]
        if example["input"]:
            lines.append(f"input:       {example['input']}")
        lines += [
            f"reference:   {example['reference']}",
            f"base:        {example['base']}",
            f"fine-tuned:  {example['finetuned']}",
        ]
    before, after = summary["val_loss_base"], summary["val_loss_finetuned"]
    lines.append("")
    if before is not None and after is not None:
        change = (after - before) / before * 100 if before else math.nan
        lines.append(f"validation loss: base {before:.4f} → fine-tuned {after:.4f} ({change:+.1f}%)")
    recorded = len(summary["examples"])
    answers = f" (with {recorded} held-out answers, base and fine-tuned)" if recorded else ""
    lines.append(
        f"wrote the adapter (step {summary['global_step']}, template {summary['prompt_template']!r}), "
        f"training_summary.json{answers} and loss_curve.png to {summary['adapter']}"
    )
    return "\n".join(lines)
