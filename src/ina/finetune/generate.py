"""Generation with a base model and InA adapters, formatting prompts with the template used in training.

model, tokenizer, template = load_for_generation("path/to/base", {"demo": DEMO_ADAPTER_DIR})
answers = generate_answers(model, tokenizer, template, [("Is this review positive?", "Great film.")])
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError
from ina.foundation.files import read_text
from ina.foundation.prompts import PromptTemplate


def option_problems(args: argparse.Namespace) -> list[str]:
    """Every invalid `ina generate` sampling option, one message each."""
    problems = []
    for name in ("max_new_tokens", "num_beams", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1; got {getattr(args, name)}")
    if args.temperature < 0:
        problems.append(f"--temperature must be ≥ 0 (0 is greedy); got {args.temperature}")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1]; got {args.top_p}")
    return problems


def base_model_of(adapter_path: str | os.PathLike[str]) -> str | None:
    """The ``base_model_name_or_path`` recorded in an adapter's config, if any."""
    config = json.loads((Path(adapter_path) / "adapter_config.json").read_text(encoding="utf-8"))
    return config.get("base_model_name_or_path") or None


def load_for_generation(
    base_model: str | None,
    adapters: dict[str, Any],
    template_name: str | None = None,
    dtype: str = "auto",
) -> tuple[Any, Any, PromptTemplate]:
    """The model (a `PeftModel` when adapters are given), its tokenizer, and the prompt template.

    ``base_model`` defaults to the first adapter's recorded base, then to the embedded SmolLM2. The
    template defaults to the one saved with the first adapter (``ina_prompt.json``), else ``chat`` when
    the tokenizer has a chat template, else ``alpaca``.
    """
    from ina.foundation.models import load_with_adapters, resolve_base_model

    first = next(iter(adapters.values()), None)
    name = resolve_base_model(base_model or (base_model_of(first) if first else None) or "")
    model, tokenizer = load_with_adapters(name, adapters, dtype=dtype)
    template = None
    if template_name and template_name != "auto":
        template = PromptTemplate.load(template_name)
    elif first:
        template = PromptTemplate.from_adapter(first)
    if template is None:
        template = PromptTemplate.load("chat" if getattr(tokenizer, "chat_template", None) else "alpaca")
    return model, tokenizer, template


def generate_answers(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    prompts: list[tuple[str, str]],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    adapter_names: list[str] | None = None,
    streamer: Any = None,
    **sampling: Any,
) -> list[str]:
    """Answers to ``(instruction, input)`` prompts; greedy unless ``sampling`` says otherwise.

    ``adapter_names`` (one per prompt, ``"__base__"`` for none) runs a mixed-adapter batch.
    """
    import torch

    texts = [template.prompt(instruction, input_text, tokenizer) for instruction, input_text in prompts]
    answers: list[str] = []
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not template.chat)
            batch = {k: v.to(device) for k, v in batch.items()}
            kwargs = dict(sampling)
            kwargs.setdefault("do_sample", False)
            if adapter_names is not None:
                kwargs["adapter_names"] = adapter_names[start : start + batch_size]
            with torch.no_grad():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    streamer=streamer,
                    **kwargs,
                )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            answers += [
                template.response(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            ]
    finally:
        tokenizer.padding_side = padding_side
    return answers


def read_prompts(path: str | os.PathLike[str], flag: str = "--prompts_file") -> list[tuple[str, str]]:
    """Prompts from a file: JSON/JSONL records (``instruction`` + ``input``, or ``prompt``), else one per line.

    A problem raises `UsageError` as ``FLAG FILE:LINE: what is wrong; fix`` (the line a record starts on).
    """
    what = "a .json list or .jsonl of records with an `instruction` (or `prompt`), or one prompt per line"
    text = read_text(path, flag, what)
    if not text.lstrip().startswith(("[", "{")):
        return [(line.strip(), "") for line in text.splitlines() if line.strip()]
    try:
        records = _records(text)
    except json.JSONDecodeError as invalid:
        raise UsageError(
            f"{flag} {path}:{invalid.lineno}: invalid JSON ({invalid.msg} at column {invalid.colno}); "
            "fix that line"
        ) from None
    prompts: list[tuple[str, str]] = []
    for line, record in records:
        if isinstance(record, str):
            prompts.append((record, ""))
            continue
        instruction = record.get("instruction", record.get("prompt")) if isinstance(record, dict) else None
        if not isinstance(instruction, str) or not instruction.strip():
            raise UsageError(
                f"{flag} {path}:{line}: the record has no non-empty `instruction` (or `prompt`) string; add one"
            )
        input_text = record.get("input") or ""
        if not isinstance(input_text, str):
            raise UsageError(
                f"{flag} {path}:{line}: `input` is {type(input_text).__name__}, not a string; make it text "
                "or drop it"
            )
        prompts.append((instruction, input_text))
    return prompts


def _records(text: str) -> list[tuple[int, Any]]:
    """The records of a JSON array or of JSON Lines, each with the line it starts on.

    Raises `json.JSONDecodeError` (its ``pos`` in ``text``) for invalid JSON.
    """
    decoder = json.JSONDecoder()
    if not text.lstrip().startswith("["):  # JSON Lines: one record per non-blank line
        records, offset = [], 0
        for number, line in enumerate(text.splitlines(keepends=True), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise json.JSONDecodeError(error.msg, text, offset + error.pos) from None
            offset += len(line)
        return records
    json.loads(text)  # the document as a whole first: a malformed array is reported where it breaks
    records, position = [], text.index("[") + 1
    while True:
        while text[position] in " \t\r\n,":
            position += 1
        if text[position] == "]":
            return records
        record, position_after = decoder.raw_decode(text, position)
        records.append((text.count("\n", 0, position) + 1, record))
        position = position_after
