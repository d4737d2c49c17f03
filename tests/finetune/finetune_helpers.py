"""Helpers and fixtures for the fine-tuning tests: a tiny LLaMA saved as a model folder, small data files, one thread.

Under a loaded 2-core machine, torch's two intra-op threads spin against each other and a tiny model's
step gets ~15x slower, so these tests run torch (and their subprocesses) on one thread.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from ina.testing import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA causal LM with the tiny tokenizer, saved like a hub model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def alpaca_records(n: int = 24) -> list[dict[str, str]]:
    """Alpaca records a tiny model can learn quickly (the answer is the input's sentiment word)."""
    records = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        records.append(
            {
                "instruction": "Is this review positive or negative?",
                "input": f"the movie film review {i}" if i % 3 else "",
                "output": f"{label} sentiment",
            }
        )
    return records


def write_json(path: Path, records: list[Any]) -> Path:
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# flags that keep a tiny run to a few optimizer steps, on one thread, quietly
QUICK = [
    "--batch_size", "4", "--micro_batch_size", "2", "--val_set_size", "4", "--show_examples", "1",
    "--example_max_new_tokens", "4", "--disable_tqdm", "true", "--lora_target_modules", "q_proj,v_proj",
]  # fmt: skip


def free_port() -> int:
    """A TCP port nobody listens on now (for a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
