"""The training data of a run: records read, checked against the template, encoded and split.

prepared = prepare_data(finetune_arguments, tokenizer, log=print)
prepared.train, prepared.validation  # datasets.Dataset (validation None when nothing is held out)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ina.finetune.data import IGNORE_INDEX, BadRecord, DataError, encode, load_data, report_bad_records
from ina.foundation.prompts import Conversation, PromptTemplate

_logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """What training needs from the data: encoded splits, the template, held-out records and counts."""

    train: Any  # datasets.Dataset
    validation: Any  # datasets.Dataset, or None when nothing is held out
    template: PromptTemplate
    heldout: list[Conversation]
    counts: dict[str, Any]


def choose_template(name: str, conversations: list[Conversation]) -> PromptTemplate:
    """The prompt template named ``name`` (``auto``: chat for conversation data, else alpaca)."""
    if name == "auto":
        name = "chat" if any(c.format != "alpaca" for c in conversations) else "alpaca"
    return PromptTemplate.load(name)


def prepare_data(options: Any, tokenizer: Any, log: Callable[[str], Any] | None = None) -> PreparedData:
    """Read, check, encode and split the records of ``options.data_path`` (`FinetuneArguments`).

    Raises `DataError` on malformed records unless ``options.skip_bad_records`` (they are then reported
    through ``log``, default this module's logger), on a chat template the tokenizer cannot render, or
    when nothing is left to train on.
    """
    import datasets

    log = log or _logger.info
    data_path = options.data_path
    if not data_path:
        from ina.embedded.instruct_data import ensure_dataset

        data_path = str(ensure_dataset())
    loaded = load_data(data_path)
    conversations = loaded.conversations[: options.max_records or None]
    template = choose_template(options.prompt_template_name, conversations)
    if template.chat and not getattr(tokenizer, "chat_template", None):
        chosen = "conversation data" if options.prompt_template_name == "auto" else "this run"
        raise DataError(
            f"--prompt_template_name chat (chosen for {chosen}) needs a tokenizer with a chat template, and this "
            "model's has none; convert the data to Alpaca records or use a model with a chat template"
        )
    bad, usable = list(loaded.bad), []
    for conversation in conversations:
        problem = template.problem(conversation, tokenizer)
        if problem:
            bad.append(BadRecord(conversation.location, problem))
        else:
            usable.append(conversation)
    if bad:
        log(report_bad_records(bad, data_path, options.skip_bad_records))
        if not options.skip_bad_records:
            raise DataError(
                f"{len(bad)} malformed record(s) in --data_path {data_path}; fix them or pass --skip_bad_records"
            )
    if not usable:
        raise DataError(f"--data_path {data_path}: no usable record to train on")
    encoded, kept = [], []
    for conversation in usable:
        example = encode(
            conversation,
            template,
            tokenizer,
            options.cutoff_len,
            options.train_on_inputs,
            options.add_eos_token,
        )
        if any(label != IGNORE_INDEX for label in example["labels"]):
            encoded.append(example)
            kept.append(conversation)
    too_long = len(usable) - len(encoded)
    if too_long:
        log(
            f"dropped {too_long} record(s) whose answer starts after --cutoff_len={options.cutoff_len} tokens "
            "(raise --cutoff_len to keep them)"
        )
    if not encoded:
        raise DataError(f"no record has answer tokens within --cutoff_len={options.cutoff_len}; raise it")
    order = list(range(len(encoded)))
    random.Random(options.seed).shuffle(order)
    n_val = _validation_count(options.val_set_size, len(encoded), log)
    val_index, train_index = order[:n_val], order[n_val:]
    counts = {
        "data_path": data_path,
        "files": loaded.files,
        "records_read": len(loaded.conversations) + len(loaded.bad),
        "records_skipped": len(bad),
        "records_too_long": too_long,
        "train_examples": len(train_index),
        "val_examples": n_val,
        "formats": sorted({c.format for c in usable}),
    }
    return PreparedData(
        train=datasets.Dataset.from_list([encoded[i] for i in train_index]),
        validation=datasets.Dataset.from_list([encoded[i] for i in val_index]) if n_val else None,
        template=template,
        heldout=[kept[i] for i in val_index],
        counts=counts,
    )


def _validation_count(size: float, total: int, log: Callable[[str], Any]) -> int:
    wanted = round(size * total) if 0 < size < 1 else int(size)
    cap = total // 5
    if wanted > cap:
        log(f"--val_set_size {size:g} is more than 20% of the {total} examples; holding out {cap} instead")
        return cap
    return wanted
