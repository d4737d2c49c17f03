"""InA (Inhibition Adaptation) as a PEFT method.

    from peft import get_peft_model
    from ina import InAConfig

    model = get_peft_model(model, InAConfig(r=8, target_modules=["q_proj", "v_proj"], inhibition=0.3))

Importing ``ina`` registers ``peft_type: "INA"`` with PEFT, so ``PeftModel.from_pretrained`` and
``AutoPeftModelFor...`` load InA adapters. (The command line, the ``ina`` console script and
``python -m ina`` alike, defers that registration, and with it torch, until a command runs: see
``ina_cli``.)
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


def _main_module() -> str | None:
    """The module ``python -m MODULE`` is about to run, while Python imports its packages; else None.

    Python sets ``sys.argv[0]`` to ``"-m"`` only during that search; ``sys.orig_argv`` names the module.
    """
    if sys.argv[:1] != ["-m"]:
        return None
    tokens = iter(sys.orig_argv[1:])
    for token in tokens:
        if token == "--check-hash-based-pycs":
            next(tokens, None)
        elif token.startswith("--"):
            continue
        elif not token.startswith("-") or token == "-":
            return None  # a script or stdin, not a module
        else:  # one or more one-letter options (e.g. -u, -um); -c, -m, -W and -X take the rest as a value
            for index, letter in enumerate(token[1:], start=2):
                if letter in "cmWX":
                    value = token[index:] or next(tokens, "")
                    if letter in "cm":
                        return value if letter == "m" else None
                    break
    return None


# `python -m ina` (what torchrun runs) is the command line, like the `ina` script: parse first.
_COMMAND_LINE = getattr(sys.modules.get("ina_cli"), "DEFER_FRAMEWORK_IMPORTS", False) or _main_module() in (
    "ina",
    "ina.__main__",
)
if not _COMMAND_LINE:
    importlib.import_module("ina.core")  # registers InA with PEFT
