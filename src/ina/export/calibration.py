"""Calibration text: where it comes from, how it is formatted and tokenized, how it is split.

The text an export is fitted on should look like what the adapter will see when served, so records are
formatted with the adapter's own prompt template (``ina_prompt.json``) and tokenized segment by segment
as ``ina finetune`` does. Records are read from ``--calibration FILE`` (Alpaca, ShareGPT or
``messages`` records in ``.json`` / ``.jsonl``, ``{"text": ...}`` records, or a plain text file whose
paragraphs are samples); by default from the adapter's own training data when ``ina finetune`` made it
(``training_summary.json``), else from the embedded instruction data. A fixed shuffle splits the
samples into a fitting part and a held-out part (never both).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError
from ina.foundation.prompts import Conversation, PromptTemplate

SUMMARY_FILE = "training_summary.json"  # what `ina finetune` records about its run
TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class Sample:
    """One tokenized calibration sample; ``answer`` marks the tokens of assistant turns (all False for plain text)."""

    input_ids: list[int]
    answer: list[bool]
    instruction: str | None = None  # Alpaca-style records: what was asked, for held-out prompts
    input: str = ""
    reference: str | None = None


@dataclass
class Calibration:
    """The fitting and held-out samples and a description of their source."""

    fit: list[Sample]
    heldout: list[Sample]
    source: dict[str, Any]

    @staticmethod
    def tokens(samples: list[Sample]) -> int:
        return sum(len(s.input_ids) for s in samples)


def training_summary(adapter: str | Path) -> dict[str, Any] | None:
    """``training_summary.json`` of an adapter made by ``ina finetune``, or None."""
    file = Path(adapter) / SUMMARY_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def default_source(adapter: str | Path) -> tuple[list[Path], str]:
    """The files to calibrate on when no ``--calibration`` is given, and why those."""
    summary = training_summary(adapter) or {}
    files = [Path(f) for f in summary.get("files") or [] if Path(f).is_file()]
    if files:
        return files, f"the adapter's training data ({SUMMARY_FILE})"
    from ina.embedded.instruct_data import DATA_FILE, ensure_dataset

    return [
        ensure_dataset() / DATA_FILE
    ], "the embedded instruction data (the adapter records no training data)"


def read_records(path: Path, flag: str = "--calibration") -> list[Any]:
    """The records of one file: JSON array / JSON Lines objects, or a text file's paragraphs as ``{"text"}``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(
            f"{flag} {str(path)!r}: cannot read it as UTF-8 text ({error}); give a readable file"
        ) from None
    if path.suffix in TEXT_SUFFIXES:
        return [{"text": part.strip()} for part in text.split("\n\n") if part.strip()]
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(
                f"{flag} {str(path)!r}: not valid JSON ({error.msg} at line {error.lineno})"
            ) from None
        return list(values)
    records = []
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                records.append(None)
    return records


def conversation(record: Any, index: int) -> Conversation | str | None:
    """An Alpaca / ShareGPT / ``messages`` record as a `Conversation`, a ``{"text"}`` record as its text."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("text"), str):
        return record["text"] if record["text"].strip() else None
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        fields = {k: str(record.get(k) or "") for k in ("instruction", "input", "output")}
        user = (
            fields["instruction"]
            if not fields["input"].strip()
            else f"{fields['instruction']}\n\n{fields['input']}"
        )
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}]
        return Conversation(messages, str(index), "alpaca", alpaca=fields)
    turns, role_key, content_key = record.get("messages"), "role", "content"
    if turns is None:
        turns, role_key, content_key = record.get("conversations"), "from", "value"
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
    }
    if not isinstance(turns, list) or not turns:
        return None
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or roles.get(turn.get(role_key)) is None:
            return None
        messages.append({"role": roles[turn[role_key]], "content": str(turn.get(content_key) or "")})
    return Conversation(messages, str(index), "messages")


def encode(
    item: Conversation | str, template: PromptTemplate, tokenizer: Any, max_length: int, add_eos: bool
) -> Sample:
    """Token ids of a sample (segments tokenized apart, as training did), cut to ``max_length``."""
    if isinstance(item, str):
        ids = tokenizer(item, add_special_tokens=True)["input_ids"][:max_length]
        return Sample(ids, [False] * len(ids))
    ids: list[int] = []
    answer: list[bool] = []
    for index, (text, trainable) in enumerate(template.segments(item, tokenizer)):
        piece = tokenizer(text, add_special_tokens=index == 0 and not template.chat)["input_ids"]
        ids += piece
        answer += [trainable] * len(piece)
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and not template.chat and (not ids or ids[-1] != eos):
        ids.append(eos)
        answer.append(True)
    fields = item.alpaca or {}
    return Sample(
        ids[:max_length],
        answer[:max_length],
        instruction=fields.get("instruction"),
        input=fields.get("input", ""),
        reference=fields.get("output"),
    )


def load_calibration(
    adapter: str | Path,
    calibration: str | None,
    template: PromptTemplate,
    tokenizer: Any,
    fit_tokens: int,
    heldout_tokens: int,
    max_length: int,
    add_eos: bool,
    seed: int = 0,
    exclude: Sequence[tuple[str, str]] = (),
) -> Calibration:
    """Samples for the fit (about ``fit_tokens`` tokens) and for held-out measures (about ``heldout_tokens``).

    Records whose ``(instruction, input)`` is in ``exclude`` (the adapter's own held-out prompts) never
    enter the fit; they lead the held-out part.
    """
    if calibration:
        path = Path(calibration)
        if not path.is_file():
            raise UsageError(
                f"--calibration {calibration!r}: no such file; give a .json/.jsonl/.txt file of text"
            )
        files, why = [path], "--calibration"
    else:
        files, why = default_source(adapter)
    items: list[Conversation | str] = []
    skipped = 0
    for file in files:
        for index, record in enumerate(read_records(file)):
            item = conversation(record, index)
            if item is None or (not isinstance(item, str) and template.problem(item, tokenizer)):
                skipped += 1
            else:
                items.append(item)
    if not items:
        raise UsageError(
            f"--calibration: no usable record in {', '.join(map(str, files))} ({skipped} skipped); give Alpaca, "
            "ShareGPT, messages or {'text': ...} records, or a plain text file"
        )
    excluded = set(exclude)
    first = [i for i in items if not isinstance(i, str) and i.alpaca and _key(i) in excluded]
    rest = [i for i in items if not (not isinstance(i, str) and i.alpaca and _key(i) in excluded)]
    random.Random(seed).shuffle(rest)
    heldout: list[Sample] = [encode(i, template, tokenizer, max_length, add_eos) for i in first]
    fit: list[Sample] = []
    for item in rest:
        target = fit if Calibration.tokens(fit) < fit_tokens else heldout
        if target is heldout and Calibration.tokens(heldout) >= heldout_tokens:
            break
        sample = encode(item, template, tokenizer, max_length, add_eos)
        if len(sample.input_ids) >= 2:
            target.append(sample)
    if not heldout or not fit:
        raise UsageError(
            f"--calibration: {len(items)} record(s) are too few to fill both a fit and a held-out part; give more "
            "text or lower --calibration_tokens"
        )
    source = {
        "files": [str(f) for f in files],
        "chosen_by": why,
        "records_usable": len(items),
        "records_skipped": skipped,
        "fit_samples": len(fit),
        "fit_tokens": Calibration.tokens(fit),
        "heldout_samples": len(heldout),
        "heldout_tokens": Calibration.tokens(heldout),
        "heldout_from_training_summary": len(first),
        "max_length": max_length,
        "seed": seed,
    }
    return Calibration(fit=fit, heldout=heldout, source=source)


def _key(item: Conversation) -> tuple[str, str]:
    fields = item.alpaca or {}
    return fields.get("instruction", ""), fields.get("input", "")


def batches(samples: list[Sample], batch_size: int, pad_id: int) -> list[dict[str, Any]]:
    """Right-padded batches (samples sorted by length to waste little padding): ids, mask, answer mask."""
    import torch

    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        width = max(len(s.input_ids) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        answer = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, sample in enumerate(chunk):
            n = len(sample.input_ids)
            ids[row, :n] = torch.tensor(sample.input_ids)
            mask[row, :n] = 1
            answer[row, :n] = torch.tensor(sample.answer, dtype=torch.bool)
        out.append({"input_ids": ids, "attention_mask": mask, "answer": answer})
    return out
