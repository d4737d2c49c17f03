"""Fixtures of the fine-tuning tests (defined in finetune_helpers.py, shared with the test modules)."""

from finetune_helpers import _one_thread, model_dir

__all__ = ["_one_thread", "model_dir"]
