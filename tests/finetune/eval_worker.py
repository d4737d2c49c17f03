"""Evaluate a tiny causal LM through `ina.foundation.harness` and write the eval loss (run alone or under torchrun).

python eval_worker.py OUT_JSON BATCH_SIZE            # one process
torchrun --nproc_per_node 2 eval_worker.py OUT BATCH  # two gloo processes, the same examples
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

EXAMPLES = 7  # odd: the distributed sampler pads the last step with a duplicate example


def examples() -> list[dict[str, list[int]]]:
    """Examples of different lengths with a masked prompt, so token weighting and padding both matter."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for index in range(EXAMPLES):
        length = 4 + 3 * index
        ids = torch.randint(3, 500, (length,), generator=generator).tolist()
        prompt = 1 + index % 3
        rows.append(
            {"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * prompt + ids[prompt:]}
        )
    return rows


def model() -> Any:
    """A tiny LLaMA with large random weights: its per-token losses vary widely."""
    from ina.testing import tiny_model

    return tiny_model("llama", initializer_range=0.5)


def evaluate(output_dir: str, batch_size: int) -> dict[str, Any]:
    import datasets
    from transformers import DataCollatorForSeq2Seq

    from ina.foundation.harness import build_trainer
    from ina.foundation.trainer_arguments import training_arguments
    from ina.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    data = datasets.Dataset.from_list(examples())
    arguments = training_arguments(
        ["--per_device_eval_batch_size", str(batch_size), "--disable_tqdm", "true"],
        output_dir,
        {"report_to": "none"},
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="pt")
    trainer = build_trainer(model(), arguments, data, data, tokenizer=tokenizer, data_collator=collator)
    return {"eval_loss": trainer.evaluate()["eval_loss"], "world_size": arguments.world_size,
            "main": arguments.process_index == 0}  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = evaluate(str(Path(sys.argv[1]).parent / "trainer"), int(sys.argv[2]))
    if result.pop("main"):
        Path(sys.argv[1]).write_text(json.dumps(result))
