"""Reading InA adapters in every format they exist in, and converting the authors' format.

Three formats reach us: ours (``"peft_type": "INA"``); the authors' (``"peft_type": "LORA"`` plus
``"lora_inhibition": ρ``, leaky_relu 0.01); and plain LoRA (no such key), which is InA with ρ = 0,
never the authors' default of 0.3.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peft import PeftModel
from torch import nn

from ina.core.config import InAConfig
from ina.core.registry import AUTHORS_KEY, PEFT_TYPE_NAME, without_peft_deprecations

CONFIG_NAME = "adapter_config.json"


def read_adapter_config(path: str | os.PathLike[str]) -> InAConfig:
    """The `InAConfig` of the adapter saved in folder ``path``, whatever its format."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {str(path)!r}: expected a folder saved by save_pretrained"
        )
    data: dict[str, Any] = json.loads(config_file.read_text())
    peft_type = data.get("peft_type")
    if peft_type == "LORA":
        data["inhibition"] = float(data.pop(AUTHORS_KEY, 0.0) or 0.0)
        data["activation"], data["negative_slope"] = "leaky_relu", 0.01
    elif peft_type != PEFT_TYPE_NAME:
        raise ValueError(
            f"{config_file}: `peft_type` must be {PEFT_TYPE_NAME!r} (InA) or 'LORA' (the authors' format or "
            f"plain LoRA); got {peft_type!r}"
        )
    fields = {f.name for f in dataclasses.fields(InAConfig) if f.init}
    return InAConfig(**{k: v for k, v in data.items() if k in fields and k != "peft_type"})


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    adapter_name: str = "default",
    is_trainable: bool = False,
) -> PeftModel:
    """Load the adapter in ``path`` (any format, see module doc) onto ``model`` and return the `PeftModel`.

    ``model`` is a base model (a new `PeftModel` is made) or a `PeftModel` (the adapter is added to it).
    """
    config = read_adapter_config(path)
    config.inference_mode = not is_trainable
    with without_peft_deprecations():
        if isinstance(model, PeftModel):
            model.add_adapter(adapter_name, config)
            model.load_adapter(str(path), adapter_name, is_trainable=is_trainable)
            return model
        return PeftModel.from_pretrained(
            model, str(path), adapter_name=adapter_name, is_trainable=is_trainable, config=config
        )


def convert_adapter(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> InAConfig:
    """Rewrite the adapter in ``src`` (any format) into our format in ``dst``; returns its config.

    Weights are copied unchanged (the tensor names are the same); ``dst`` appears complete or not at all.
    """
    src, dst = Path(src), Path(dst)
    config = read_adapter_config(src)
    if dst.exists():
        raise FileExistsError(f"destination {str(dst)!r} exists; choose a new folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for item in src.iterdir():
            if item.name != CONFIG_NAME and item.is_file():
                shutil.copy2(item, staging / item.name)
        config.save_pretrained(str(staging))
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config
