"""Data formats, bad-record reports, and label masking of `ina finetune`'s data pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_helpers import alpaca_records, write_json, write_jsonl

from ina.finetune.data import IGNORE_INDEX, DataError, encode, load_data, parse_record
from ina.foundation.prompts import PromptTemplate, available_templates
from ina.testing import tiny_tokenizer

SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Answer briefly."},
        {"from": "human", "value": "Tell me a joke about a cat."},
        {"from": "gpt", "value": "The cat sat on the lazy dog."},
        {"from": "human", "value": "Another one?"},
        {"from": "gpt", "value": "The quick brown fox."},
    ]
}
MESSAGES = {
    "messages": [
        {"role": "user", "content": "What is the colour of my bag?"},
        {"role": "assistant", "content": "red"},
    ]
}


def test_alpaca_json_array_and_jsonl_read_the_same_records(tmp_path: Path) -> None:
    records = alpaca_records(6)
    array = load_data(write_json(tmp_path / "a.json", records))
    lines = load_data(write_jsonl(tmp_path / "a.jsonl", records))
    assert not array.bad and not lines.bad
    assert (
        [c.alpaca for c in array.conversations]
        == [c.alpaca for c in lines.conversations]
        == [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in records]
    )
    # each JSONL record on its own line; JSON array elements found on the line they start
    assert [c.location for c in lines.conversations] == [f"{tmp_path / 'a.jsonl'}:{i}" for i in range(1, 7)]
    text = (tmp_path / "a.json").read_text().splitlines()
    for conversation in array.conversations:
        line = int(conversation.location.rsplit(":", 1)[1])
        assert text[line - 1].strip() == "{"


def test_chinese_alpaca_record_is_read_unchanged(tmp_path: Path) -> None:
    record = {"instruction": "判断下面评论的情感", "input": "质量不好，不推荐。", "output": "负面"}
    loaded = load_data(write_jsonl(tmp_path / "zh.jsonl", [record]))
    assert loaded.conversations[0].alpaca == record
    assert loaded.conversations[0].messages[0]["content"] == "判断下面评论的情感\n\n质量不好，不推荐。"


def test_sharegpt_and_messages_become_conversations(tmp_path: Path) -> None:
    loaded = load_data(write_jsonl(tmp_path / "chat.jsonl", [SHAREGPT, MESSAGES]))
    sharegpt, messages = loaded.conversations
    assert sharegpt.format == "sharegpt" and messages.format == "messages"
    assert [m["role"] for m in sharegpt.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert sharegpt.messages[2]["content"] == "The cat sat on the lazy dog."
    assert messages.messages == MESSAGES["messages"]


def test_a_folder_is_read_recursively_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl", [MESSAGES])
    write_json(tmp_path / "sub" / "c.json", alpaca_records(2))
    write_json(tmp_path / "a.json", alpaca_records(3))
    (tmp_path / "notes.txt").write_text("not data")
    loaded = load_data(tmp_path)
    assert [Path(f).name for f in loaded.files] == ["a.json", "b.jsonl", "c.json"]
    assert len(loaded.conversations) == 6


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"input": "x", "output": "y"}, "missing the field `instruction`"),
        ({"instruction": "x", "input": ""}, "missing the field `output`"),
        ({"instruction": "x", "output": "   "}, "`output` is empty"),
        ({"instruction": "", "output": "y"}, "`instruction` is empty"),
        ({"instruction": ["x"], "output": "y"}, "`instruction` must be a string; got list"),
        ({"instruction": "x", "input": 3, "output": "y"}, "`input` must be a string; got int"),
        ({"instruction": "x", "output": 5}, "`output` must be a string; got int"),
        ("just text", "must be a JSON object; got str"),
        ({"prompt": "x", "completion": "y"}, "not a recognised record"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "`messages[0].role` must be one of"),
        ({"messages": [{"role": "user", "content": 1}]}, "`messages[0].content` must be a string"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
            "empty assistant",
        ),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
            "must be one of",
        ),
    ],
)
def test_every_bad_record_is_reported_with_file_and_line(
    tmp_path: Path, record: object, problem: str
) -> None:
    good = alpaca_records(2)
    path = write_jsonl(tmp_path / "data.jsonl", [good[0], record, good[1]])
    loaded = load_data(path)
    assert len(loaded.conversations) == 2
    [bad] = loaded.bad
    assert bad.location == f"{path}:2"
    assert problem in bad.problem


def test_invalid_json_line_is_a_bad_record_but_a_broken_json_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(alpaca_records(1)[0]) + "\n{not json\n\n" + json.dumps(MESSAGES) + "\n")
    loaded = load_data(path)
    assert len(loaded.conversations) == 2
    assert [str(b) for b in loaded.bad] == [
        f"{path}:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    ]

    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "a" "output": "b"}\n]')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON"):
        load_data(broken)


def test_json_file_with_one_record_per_line_is_read_as_json_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.json", alpaca_records(3))
    loaded = load_data(path)
    assert len(loaded.conversations) == 3 and loaded.conversations[2].location == f"{path}:3"
    single = write_json(tmp_path / "one.json", alpaca_records(1)[0])
    with pytest.raises(DataError, match="must hold an array of records"):
        load_data(single)


def test_hub_dataset_name_offline_says_to_use_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"Offline, give a local \.json/\.jsonl file instead"):
        load_data("no-such-owner/no-such-dataset")


def test_missing_path_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data_path"):
        load_data(tmp_path / "nothing.json")
    with pytest.raises(DataError, match=r"no \.json or \.jsonl"):
        load_data(tmp_path)


def test_shipped_templates() -> None:
    assert {"alpaca", "alpaca_zh", "chat"} <= set(available_templates())
    zh = PromptTemplate.load("alpaca_zh")
    assert zh.prompt("判断情感", "很好").endswith("### 回答:\n")
    with pytest.raises(ValueError, match="--prompt_template_name must be one of"):
        PromptTemplate.load("nope")


def _conversation(record: dict) -> object:
    parsed = parse_record(record, "test:1")
    assert not hasattr(parsed, "problem"), parsed
    return parsed


def test_alpaca_labels_mask_exactly_the_prompt() -> None:
    tokenizer = tiny_tokenizer()
    template = PromptTemplate.load("alpaca")
    record = {"instruction": "Tell me a joke", "input": "about a cat", "output": "The cat sat."}
    example = encode(_conversation(record), template, tokenizer, cutoff_len=512)
    prompt_ids = tokenizer(template.prompt("Tell me a joke", "about a cat"))["input_ids"]
    answer_ids = tokenizer("The cat sat.", add_special_tokens=False)["input_ids"]
    assert example["input_ids"] == prompt_ids + answer_ids + [tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(example["input_ids"]).startswith("Below is an instruction")

    unmasked = encode(_conversation(record), template, tokenizer, cutoff_len=512, train_on_inputs=True)
    assert unmasked["labels"] == unmasked["input_ids"]

    no_eos = encode(_conversation(record), template, tokenizer, cutoff_len=512, add_eos_token=False)
    assert no_eos["input_ids"] == prompt_ids + answer_ids

    cut = encode(_conversation(record), template, tokenizer, cutoff_len=len(prompt_ids) + 1)
    assert cut["input_ids"] == prompt_ids + answer_ids[:1]
    assert cut["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids[:1]


def test_chat_template_labels_only_the_assistant_turns() -> None:
    tokenizer = tiny_tokenizer()
    template = PromptTemplate.load("chat")
    conversation = _conversation(SHAREGPT)
    example = encode(conversation, template, tokenizer, cutoff_len=1024)
    # the ids are the full rendered conversation
    rendered = tokenizer.apply_chat_template(conversation.messages, tokenize=False)
    assert tokenizer.decode(example["input_ids"]) == rendered
    # the labelled tokens decode to exactly the assistant turns, each with its end-of-turn marker
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    runs.append(current)
    assert [tokenizer.decode(run) for run in runs] == [
        "The cat sat on the lazy dog.<|im_end|>\n",
        "The quick brown fox.<|im_end|>\n",
    ]


def test_alpaca_template_refuses_multi_turn_conversations() -> None:
    template = PromptTemplate.load("alpaca")
    problem = template.problem(_conversation(SHAREGPT), tiny_tokenizer())
    assert problem is not None and "--prompt_template_name chat" in problem
    assert template.problem(_conversation(MESSAGES), tiny_tokenizer()) is None
