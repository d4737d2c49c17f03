"""Wrapping and loading an InA model warns nothing (PEFT 0.21 reads a property transformers 5 deprecated)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model

import ina
from ina.testing import tiny_model

DEPRECATION = "`is_gradient_checkpointing` is deprecated"


def test_get_peft_model_and_from_pretrained_on_ina_warn_nothing(tmp_path: Path) -> None:
    config = ina.InAConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # also clears the once-per-location registry
        get_peft_model(tiny_model("llama"), config).save_pretrained(tmp_path)
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
        ina.load_adapter(tiny_model("llama"), tmp_path)


def _warned(action: Callable[[], object]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught if DEPRECATION in str(w.message)]


def test_the_warning_stays_for_other_methods_and_for_user_code() -> None:
    """Only PEFT's read while building an InA model is quiet: no filter is left behind."""
    assert _warned(lambda: get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"])))
    model = get_peft_model(tiny_model("llama"), ina.InAConfig(r=4, target_modules=["q_proj"]))
    assert _warned(lambda: model.get_base_model().is_gradient_checkpointing)
