"""Evaluation under N processes equals one process, and the effective batch a user asked for is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import eval_worker
import pytest
import torch
from finetune_helpers import free_port

from ina.finetune.arguments import FinetuneArguments, batch_note, split_batch, training_arguments

WORKER = Path(eval_worker.__file__)


def _reference_loss() -> float:
    """The token-weighted mean loss over all examples, one unpadded example at a time."""
    model, total, tokens = eval_worker.model(), 0.0, 0
    with torch.no_grad():
        for row in eval_worker.examples():
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            count = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * count
            tokens += count
    return total / tokens


@pytest.mark.slow  # the default suite checks the same through `ina finetune` (test_distributed.py)
def test_eval_loss_of_two_gloo_processes_equals_one_process(tmp_path: Path) -> None:
    one = eval_worker.evaluate(str(tmp_path / "one"), batch_size=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(WORKER), str(tmp_path / "two.json"), "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    # 7 examples on 2 processes: the sampler repeats one to even the last step; it is not counted twice.
    # Transformers' own eval loss here differs by process count (a mean of per-batch means, tokens
    # averaged across the processes of a step); ours is the same number, to the last bit.
    assert two["eval_loss"] == one["eval_loss"]
    assert one["eval_loss"] == pytest.approx(_reference_loss(), rel=1e-5)  # and it is the set's token mean


@pytest.mark.parametrize(
    ("batch", "micro", "world", "expected"),
    [
        (4, 4, 1, (4, 1)),
        (128, 4, 1, (4, 32)),
        (4, 4, 2, (2, 1)),  # the quick demo under torchrun --nproc_per_node 2: 2 × 1 × 2 = 4, not 8
        (128, 4, 8, (4, 4)),
        (12, 4, 2, (3, 2)),
        (8, 8, 3, (3, 1)),  # 8 cannot be split over 3 processes: 9, said at start
        (2, 2, 4, (1, 1)),  # fewer examples than processes: 4
    ],
)
def test_the_global_batch_is_kept_over_processes(
    batch: int, micro: int, world: int, expected: tuple[int, int]
) -> None:
    per_device, accumulation = split_batch(batch, micro, world)
    assert (per_device, accumulation) == expected
    assert per_device <= micro
    if batch % world == 0:
        assert per_device * accumulation * world == batch


def test_a_changed_batch_is_stated_in_one_line() -> None:
    options = FinetuneArguments(base_model="m", batch_size=4, micro_batch_size=4)
    arguments = training_arguments(options, [], world_size=2)
    assert (arguments.per_device_train_batch_size, arguments.gradient_accumulation_steps) == (2, 1)
    assert batch_note(options, 4, 1, 1) is None  # as asked
    lowered = batch_note(options, 2, 1, 2)
    assert lowered == (
        "note: --batch_size 4 is kept over 2 process(es): 2 per forward × 1 accumulation step(s) × 2 process(es) "
        "(--micro_batch_size 4 lowered to 2)"
    )
    options = FinetuneArguments(base_model="m", batch_size=8, micro_batch_size=4)
    arguments = training_arguments(options, ["--gradient_accumulation_steps", "4"])
    note = batch_note(
        options, arguments.per_device_train_batch_size, arguments.gradient_accumulation_steps, 1
    )
    assert note is not None and len(note.splitlines()) == 1
    assert (
        "each optimizer step sees 16 examples (4 per forward × 4 accumulation step(s) × 1 process(es))"
        in note
    )
    assert "not --batch_size 8" in note and "--gradient_accumulation_steps" in note
    assert "not a multiple of the 3 processes" in (batch_note(options, 3, 1, 3) or "")
