"""How close the export is to the InA adapter: next-token distributions on held-out text, and answers.

One `PeftModel` carries both adapters (``ina`` and ``export``); the base is the same model with adapters
switched off, so the three variants are compared on exactly the same weights and inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ina.export.calibration import Sample
from ina.foundation.prompts import PromptTemplate

INA, EXPORT, BASE = "ina", "export", "base"


@contextlib.contextmanager
def variant(model: Any, name: str) -> Iterator[None]:
    """Run the block with adapter ``name`` active, or with adapters off for ``"base"``."""
    if name == BASE:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


def _logprobs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    device = next(model.parameters()).device
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return torch.log_softmax(out.logits.float(), dim=-1).cpu()  # (b, t, vocab)


def compare_next_tokens(
    model: Any, batches: list[dict[str, Any]], during_ina: Any = contextlib.nullcontext
) -> dict[str, Any]:
    """Mean KL(InA ‖ other) and top-1 agreement of next-token distributions, other = export and base.

    Over every real token position, and over the positions that predict an answer token. ``during_ina``
    is a context manager entered around the InA forward passes (the per-layer error hooks).
    """
    sums: dict[str, dict[str, float]] = {}
    for batch in batches:
        mask = batch["attention_mask"].bool()
        answer = torch.zeros_like(mask)
        answer[:, :-1] = batch["answer"][:, 1:] & mask[:, 1:]
        with torch.no_grad(), variant(model, INA), during_ina():
            reference = _logprobs(model, batch)
        top = reference.argmax(-1)
        for other in (EXPORT, BASE):
            with torch.no_grad(), variant(model, other):
                logp = _logprobs(model, batch)
            kl = (reference.exp() * (reference - logp)).sum(-1)  # (b, t)
            agree = (logp.argmax(-1) == top).float()
            for scope, where in (("all", mask), ("answer", answer)):
                total = sums.setdefault(f"{other}/{scope}", {"kl": 0.0, "agree": 0.0, "n": 0.0})
                total["kl"] += float(kl[where].sum())
                total["agree"] += float(agree[where].sum())
                total["n"] += float(where.sum())
    result: dict[str, Any] = {}
    for key, total in sums.items():
        other, scope = key.split("/")
        n = total["n"]
        result.setdefault(scope, {"tokens": int(n)})[f"ina_vs_{other}"] = {
            "mean_kl": total["kl"] / n if n else None,
            "top1_agreement": total["agree"] / n if n else None,
        }
    return result


def generate(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    prompts: list[tuple[str, str]],
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to ``(instruction, input)`` prompts, formatted with ``template``."""
    device = next(model.parameters()).device
    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [template.prompt(i, x, tokenizer) for i, x in prompts[start : start + batch_size]]
            encoded = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=not template.chat
            )
            encoded = {k: v.to(device) for k, v in encoded.items()}
            with torch.no_grad():
                out = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row in out[:, encoded["input_ids"].shape[1] :]:
                answers.append(template.response(tokenizer.decode(row, skip_special_tokens=True)))
    finally:
        tokenizer.padding_side = side
    return answers


def _same(answer: str, reference: str) -> bool:
    def norm(text: str) -> str:
        return text.strip().strip(".!。").strip().lower()

    return norm(answer) == norm(reference)


def side_by_side(
    model: Any, tokenizer: Any, template: PromptTemplate, samples: list[Sample], max_new_tokens: int
) -> list[dict[str, Any]]:
    """Held-out prompts (Alpaca-style samples) answered greedily by InA, the export and the base."""
    chosen = [s for s in samples if s.instruction is not None]
    prompts = [(s.instruction or "", s.input) for s in chosen]
    answers = {}
    for name in (INA, EXPORT, BASE):
        with variant(model, name):
            answers[name] = generate(model, tokenizer, template, prompts, max_new_tokens) if prompts else []
    return [
        {
            "instruction": s.instruction,
            "input": s.input,
            "reference": s.reference,
            **{name: answers[name][i] for name in (INA, EXPORT, BASE)},
        }
        for i, s in enumerate(chosen)
    ]


def summarize_answers(rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """How often each column's answer is InA's, and its accuracy on label prompts (references of ≤ 3 words)."""
    if not rows:
        return {}
    columns = [c for c in rows[0] if c not in ("instruction", "input", "reference")]
    labels = [r for r in rows if r["reference"] and len(r["reference"].split()) <= 3]
    return {
        "prompts": len(rows),
        "max_new_tokens": max_new_tokens,
        "same_as_ina": {c: sum(r[c] == r[INA] for r in rows) / len(rows) for c in columns if c != INA},
        "label_prompts": len(labels),
        "label_accuracy": {c: sum(_same(r[c], r["reference"]) for r in labels) / len(labels) for c in columns}
        if labels
        else {},
    }
