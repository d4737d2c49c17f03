"""A `transformers.Trainer` whose loss-only evaluation of a causal LM is one number for any batch and process count.

The Trainer's own eval loss is a mean of per-batch losses, and under N processes transformers also
averages tokens across the N batches of a step, so 1 and 2 processes give different numbers on the same
examples. `exact_loss_trainer` sums each example's token losses and token counts, gathers them without the
examples the distributed sampler repeats, and divides once: the token mean over the whole eval set.

It also gives the files it saves (adapters, checkpoints) the permissions a plain ``open`` gives: PEFT
writes ``adapter_model.safetensors`` through safetensors, whose temporary file is created with mode 0600.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ina.foundation.files import current_umask

_TRAINER: list[type] = []


def exact_loss_trainer() -> type:
    """The `transformers.Trainer` subclass described above (built once, on first use)."""
    if _TRAINER:
        return _TRAINER[0]
    import torch
    from transformers import Trainer

    class ExactLossTrainer(Trainer):
        _totals: list[float] | None = None

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            super()._save(output_dir, state_dict=state_dict)
            if self.args.should_save:  # the process that wrote the files
                usual_modes(output_dir if output_dir is not None else self.args.output_dir)

        def evaluation_loop(self, dataloader: Any, description: str, *args: Any, **kwargs: Any) -> Any:
            self._totals = [0.0, 0.0]
            try:
                output = super().evaluation_loop(dataloader, description, *args, **kwargs)
            finally:
                (loss, tokens), self._totals = self._totals, None
            if tokens:
                prefix = kwargs.get("metric_key_prefix", args[2] if len(args) > 2 else "eval")
                rest = {k: v for k, v in (output.metrics or {}).items() if k != f"{prefix}_loss"}
                output = output._replace(metrics={f"{prefix}_loss": loss / tokens, **rest})
            return output

        def prediction_step(
            self, model: Any, inputs: Any, prediction_loss_only: bool, *args: Any, **kw: Any
        ) -> Any:
            labels = inputs.get("labels")
            exact = (
                self._totals is not None
                and prediction_loss_only
                and getattr(self, "_loss_shifts_labels", False)
                and labels is not None
                and labels.shape == inputs.get("input_ids", labels[..., :0]).shape
            )
            if not exact:
                return super().prediction_step(model, inputs, prediction_loss_only, *args, **kw)
            inputs = self._prepare_inputs(inputs)
            labels = inputs["labels"]
            with torch.no_grad(), self.compute_loss_context_manager():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            targets = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )
            rows = torch.stack([losses.sum(1).double(), (targets != -100).sum(1).double()], dim=1)
            # every process's rows, in dataset order, without the examples the sampler repeated
            rows = self.accelerator.gather_for_metrics(rows).cpu()
            for row_loss, row_tokens in rows.tolist():
                self._totals[0] += row_loss  # type: ignore[index]
                self._totals[1] += row_tokens  # type: ignore[index]
            return None, None, None

    _TRAINER.append(ExactLossTrainer)
    return ExactLossTrainer


def usual_modes(folder: str | os.PathLike[str]) -> None:
    """Give the files in ``folder`` the mode a plain ``open`` gives new files: ``0o666`` less the umask."""
    mode = 0o666 & ~current_umask()
    for item in Path(folder).iterdir():
        if item.is_file() and not item.is_symlink():
            os.chmod(item, mode)
