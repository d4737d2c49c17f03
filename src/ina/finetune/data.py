"""Instruction data: read Alpaca, ShareGPT and OpenAI-``messages`` records, validate them, tokenize them.

Every record becomes a :class:`Conversation` (a list of ``{"role", "content"}`` messages) tagged with
where it came from (``file:line``), so a malformed record is reported where a person can fix it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError
from ina.foundation.files import read_text
from ina.foundation.prompts import Conversation, PromptTemplate

IGNORE_INDEX = -100
DATA_SUFFIXES = (".json", ".jsonl")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass
class BadRecord:
    """A record that cannot be trained on: where it is and what is wrong with it."""

    location: str
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: {self.problem}"


class DataError(UsageError):
    """The data cannot be used as given; the message says where and how to fix it."""


@dataclass
class LoadedData:
    """Everything read from the data path: usable conversations and the records that were rejected."""

    conversations: list[Conversation] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def load_data(path: str | os.PathLike[str]) -> LoadedData:
    """Read every record of ``path``: a ``.json`` (array or JSON Lines) or ``.jsonl`` file, a folder of
    them (read recursively, in name order), or a Hugging Face dataset name (needs the network).

    Records that are not valid are collected in ``bad``, never raised: the caller decides.
    """
    path_str = str(path)
    local = Path(path_str).expanduser()
    loaded = LoadedData()
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.suffix in DATA_SUFFIXES and not _hidden(p, local))
        if not files:
            raise DataError(f"--data_path {path_str!r} is a folder with no .json or .jsonl file in it")
        for file in files:
            _read_file(file, loaded)
    elif local.is_file():
        _read_file(local, loaded)
    elif _looks_like_hub_name(path_str):
        _read_hub_dataset(path_str, loaded)
    else:
        raise DataError(
            f"--data_path {path_str!r} is neither a file, a folder, nor a Hugging Face dataset name "
            "(owner/name); give an Alpaca/ShareGPT/messages .json or .jsonl file or a folder of them"
        )
    return loaded


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return (
        1 <= len(parts) <= 2 and all(parts) and not name.endswith(DATA_SUFFIXES) and not name.startswith(".")
    )


def _read_file(file: Path, loaded: LoadedData) -> None:
    loaded.files.append(str(file))
    text = read_text(file, "--data_path", "an Alpaca/ShareGPT/messages .json or .jsonl file", "utf-8-sig")
    stripped = text.lstrip()
    if file.suffix == ".json" and stripped.startswith("["):
        items = _json_array_items(text, file)
    elif file.suffix == ".json" and stripped.startswith("{") and _single_json_object(text):
        raise DataError(
            f"{file}: a .json data file must hold an array of records (or one record per line); "
            "it holds a single JSON object"
        )
    else:
        items = _json_lines_items(text)
    for line, value, error in items:
        location = f"{file}:{line}"
        if error is not None:
            loaded.bad.append(BadRecord(location, error))
            continue
        parsed = parse_record(value, location)
        if isinstance(parsed, BadRecord):
            loaded.bad.append(parsed)
        else:
            loaded.conversations.append(parsed)


def _single_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _json_lines_items(text: str) -> list[tuple[int, Any, str | None]]:
    items: list[tuple[int, Any, str | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line), None))
        except json.JSONDecodeError as error:
            items.append((number, None, f"invalid JSON ({error.msg} at column {error.colno})"))
    return items


def _json_array_items(text: str, file: Path) -> list[tuple[int, Any, str | None]]:
    """The elements of a JSON array with the line each starts on (json.load would lose the positions)."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any, str | None]] = []
    position = text.index("[") + 1
    expect_value = True
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            raise DataError(f"{file}: invalid JSON: the array is not closed with ']'; fix the file")
        if text[position] == "]":
            return items
        if not expect_value:
            if text[position] != ",":
                line = text.count("\n", 0, position) + 1
                raise DataError(
                    f"{file}:{line}: invalid JSON: expected ',' or ']' between records; fix the file"
                )
            position += 1
            expect_value = True
            continue
        line = text.count("\n", 0, position) + 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{file}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno}); a .json file must "
                "parse as a whole, so fix it (or use .jsonl, where a broken line is reported and can be skipped)"
            ) from None
        items.append((line, value, None))
        expect_value = False


def _read_hub_dataset(name: str, loaded: LoadedData) -> None:
    try:
        import datasets

        dataset = datasets.load_dataset(name, split="train")
    except Exception as error:  # offline, unknown name, gated: all end the same way for the user
        raise DataError(
            f"--data_path {name!r}: not a local file or folder, and loading it as a Hugging Face dataset failed "
            f"({type(error).__name__}: {str(error)[:300]}). Offline, give a local .json/.jsonl file instead."
        ) from None
    loaded.files.append(f"hf://datasets/{name}")
    for index, row in enumerate(dataset):
        parsed = parse_record(dict(row), f"{name}[{index}]")
        (loaded.bad if isinstance(parsed, BadRecord) else loaded.conversations).append(parsed)  # type: ignore[arg-type]


def parse_record(value: Any, location: str) -> Conversation | BadRecord:
    """Validate one record and turn it into a :class:`Conversation`, or say what is wrong with it."""
    if not isinstance(value, dict):
        return BadRecord(location, f"a record must be a JSON object; got {type(value).__name__}")
    if "messages" in value:
        return _parse_turns(
            value["messages"], location, "messages", "role", "content", {r: r for r in _MESSAGE_ROLES}
        )
    if "conversations" in value:
        return _parse_turns(value["conversations"], location, "sharegpt", "from", "value", _SHAREGPT_ROLES)
    if "instruction" in value or "output" in value:
        return _parse_alpaca(value, location)
    return BadRecord(
        location,
        "not a recognised record: expected Alpaca fields (instruction, input, output), ShareGPT "
        f"`conversations` or OpenAI `messages`; got keys {sorted(value)}",
    )


def _parse_alpaca(value: dict[str, Any], location: str) -> Conversation | BadRecord:
    fields: dict[str, str] = {}
    for name, required in (("instruction", True), ("input", False), ("output", True)):
        item = value.get(name)
        if item is None:
            if required:
                return BadRecord(location, f"Alpaca record is missing the field `{name}`")
            item = ""
        if not isinstance(item, str):
            return BadRecord(location, f"Alpaca field `{name}` must be a string; got {type(item).__name__}")
        fields[name] = item
    if not fields["instruction"].strip():
        return BadRecord(location, "Alpaca field `instruction` is empty")
    if not fields["output"].strip():
        return BadRecord(location, "Alpaca field `output` is empty: nothing to learn from this record")
    user = (
        fields["instruction"]
        if not fields["input"].strip()
        else f"{fields['instruction']}\n\n{fields['input']}"
    )
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": fields["output"]}]
    return Conversation(messages, location, "alpaca", alpaca=fields)


def _parse_turns(
    turns: Any, location: str, kind: str, role_key: str, content_key: str, roles: dict[str, str]
) -> Conversation | BadRecord:
    field_name = "messages" if kind == "messages" else "conversations"
    if not isinstance(turns, list) or not turns:
        return BadRecord(location, f"`{field_name}` must be a non-empty list of turns; got {turns!r:.60}")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return BadRecord(
                location, f"`{field_name}[{index}]` must be an object; got {type(turn).__name__}"
            )
        role, content = turn.get(role_key), turn.get(content_key)
        if role not in roles:
            return BadRecord(
                location, f"`{field_name}[{index}].{role_key}` must be one of {sorted(roles)}; got {role!r}"
            )
        if not isinstance(content, str):
            return BadRecord(
                location,
                f"`{field_name}[{index}].{content_key}` must be a string; got {type(content).__name__}",
            )
        messages.append({"role": roles[role], "content": content})
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        return BadRecord(location, f"`{field_name}` has no assistant turn: nothing to learn from this record")
    if any(not m["content"].strip() for m in answers):
        return BadRecord(location, f"`{field_name}` has an empty assistant turn")
    return Conversation(messages, location, kind)


def report_bad_records(bad: list[BadRecord], data_path: str, skip: bool, limit: int = 20) -> str:
    """The text telling the user which records are malformed, and what happens next."""
    lines = [str(record) for record in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"... and {len(bad) - limit} more")
    if skip:
        lines.append(f"skipped {len(bad)} malformed record(s) in {data_path} (--skip_bad_records)")
    else:
        lines.append(
            f"{len(bad)} malformed record(s) in {data_path} (listed above): fix them, or pass "
            "--skip_bad_records to train on the others"
        )
    return "\n".join(lines)


def encode(
    conversation: Conversation,
    template: PromptTemplate,
    tokenizer: Any,
    cutoff_len: int,
    train_on_inputs: bool = False,
    add_eos_token: bool = True,
) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` of one conversation, cut to ``cutoff_len`` tokens.

    Each segment the template renders (prompt, answer, ...) is tokenized on its own and the ids are
    concatenated, so the prompt's ids are exactly those that generation will see. Labels are
    ``IGNORE_INDEX`` on every prompt token unless ``train_on_inputs``.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for index, (text, trainable) in enumerate(template.segments(conversation, tokenizer)):
        ids = tokenizer(text, add_special_tokens=index == 0 and not template.chat)["input_ids"]
        input_ids += ids
        labels += ids if trainable or train_on_inputs else [IGNORE_INDEX] * len(ids)
    eos = tokenizer.eos_token_id
    if add_eos_token and eos is not None and not template.chat and (not input_ids or input_ids[-1] != eos):
        input_ids.append(eos)
        labels.append(eos)
    input_ids, labels = input_ids[:cutoff_len], labels[:cutoff_len]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
