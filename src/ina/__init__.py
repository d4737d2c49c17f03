"""InA (Inhibition Adaptation) as a PEFT method.

    from peft import get_peft_model
    from ina import InAConfig

    model = get_peft_model(model, InAConfig(r=8, target_modules=["q_proj", "v_proj"], inhibition=0.3))

Importing ``ina`` registers ``peft_type: "INA"`` with PEFT, so ``PeftModel.from_pretrained`` and
``AutoPeftModelFor...`` load InA adapters. (The ``ina`` console script defers that registration,
and with it torch, until a command runs: see ``ina_cli``.)
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the core module that defines it.
_PUBLIC: dict[str, str] = {
    "AdapterFileError": "ina.core.loading",
    "InAConfig": "ina.core.config",
    "InAConfigError": "ina.core.config",
    "InAModel": "ina.core.model",
    "MergeRefusedError": "ina.core.layer",
    "UnsupportedTargetError": "ina.core.model",
    "check_adapter_folder": "ina.core.loading",
    "convert_adapter": "ina.core.loading",
    "ina_delta": "ina.core.functional",
    "inhibit": "ina.core.functional",
    "load_adapter": "ina.core.loading",
    "read_adapter_config": "ina.core.loading",
}

__all__ = [
    "AdapterFileError",
    "InAConfig",
    "InAConfigError",
    "InAModel",
    "MergeRefusedError",
    "UnsupportedTargetError",
    "__version__",
    "check_adapter_folder",
    "convert_adapter",
    "ina_delta",
    "inhibit",
    "load_adapter",
    "read_adapter_config",
]

if TYPE_CHECKING:
    from ina.core.config import InAConfig, InAConfigError
    from ina.core.functional import ina_delta, inhibit
    from ina.core.layer import MergeRefusedError
    from ina.core.loading import (
        AdapterFileError,
        check_adapter_folder,
        convert_adapter,
        load_adapter,
        read_adapter_config,
    )
    from ina.core.model import InAModel, UnsupportedTargetError


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ina' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


if not getattr(sys.modules.get("ina_cli"), "DEFER_FRAMEWORK_IMPORTS", False):
    importlib.import_module("ina.core")  # registers InA with PEFT
