"""Loading a base model and its adapters, unmerged and with eager attention, for the viz commands."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

# Short names for the offline defaults (see ina.embedded) and the models they stand for.
ALIASES: dict[str, str] = {"minilm": "all-MiniLM-L6-v2", "smollm": "SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class AdapterSpec:
    """One ``--adapter NAME=PATH`` argument."""

    name: str
    path: Path


def parse_adapter(value: str) -> AdapterSpec:
    """``NAME=PATH`` (or a bare ``PATH``, named after its folder) → `AdapterSpec`; raises ``ValueError``."""
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name, value
    name, path = name.strip(), path.strip()
    if not name or not path:
        raise ValueError(f"--adapter must be NAME=PATH (e.g. ina30=runs/ina-0.3); got {value!r}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):  # module dictionaries refuse dots
        raise ValueError(
            f"--adapter NAME must use letters, digits, '_' and '-' only (e.g. ina30); got {name!r}"
        )
    if name == "base" or name.startswith("__"):
        raise ValueError(f"--adapter: the name {name!r} is reserved for the base model; choose another NAME")
    if name in "lora_":  # PEFT finds adapter weights by the prefix "lora_"; such a name may reinitialise them
        raise ValueError(
            f"--adapter: the name {name!r} is part of PEFT's parameter prefix 'lora_'; choose another NAME (e.g. lora0)"
        )
    if not (Path(path) / "adapter_config.json").is_file():
        raise ValueError(
            f"--adapter {value!r}: {path!r} has no adapter_config.json; give the folder that "
            "save_pretrained (ina finetune, ina glue, ina sweep) wrote"
        )
    return AdapterSpec(name, Path(path))


def resolve_base_model(name: str) -> str:
    """``minilm`` / ``smollm`` → the embedded default's folder; anything else is returned unchanged."""
    if name == "minilm":
        from ina.embedded.minilm import model_path

        return str(model_path())
    if name == "smollm":
        from ina.embedded.smollm import ensure_model

        return str(ensure_model())
    return name


def display_name(base_model: str) -> str:
    """The name to print for ``--base_model``: the model an alias stands for, else the argument itself."""
    return ALIASES.get(base_model, base_model)


def _num_labels(adapter_dir: Path) -> int | None:
    """The number of labels of a classification head saved with the adapter (``modules_to_save``), if any."""
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118  # safe_open has keys(), no __iter__
            if "lora_" in key:
                continue
            if key.endswith(("classifier.weight", "out_proj.weight", "score.weight")):
                return int(handle.get_slice(key).get_shape()[0])
    return None


def _auto_class(task_type: str | None) -> Any:
    import transformers

    return {
        "CAUSAL_LM": transformers.AutoModelForCausalLM,
        "SEQ_CLS": transformers.AutoModelForSequenceClassification,
        "TOKEN_CLS": transformers.AutoModelForTokenClassification,
        "QUESTION_ANS": transformers.AutoModelForQuestionAnswering,
    }.get(task_type or "", transformers.AutoModel)


def check_adapter_loaded(model: nn.Module, spec: AdapterSpec) -> None:
    """Raise when tensors of ``spec``'s file found no module: the adapter was trained on another model or head."""
    weights = spec.path / "adapter_model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        prefixes = {key.split(".lora_")[0] for key in handle.keys() if ".lora_" in key}  # noqa: SIM118
    modules = {name for name, module in model.named_modules() if spec.name in getattr(module, "lora_A", {})}
    modules |= {
        name for name, module in model.named_modules() if spec.name in getattr(module, "lora_embedding_A", {})
    }
    missing = sorted(prefixes - modules)
    if missing:
        raise ValueError(
            f"--adapter {spec.name}={spec.path}: {len(missing)} adapted module(s) of the file are not in the "
            f"loaded model (first: {missing[0]!r}); the adapter was trained on another base model or head. "
            f"Pass the --base_model it was trained on, with the head its adapter_config.json `task_type` names "
            f"(here {model.peft_config[spec.name].task_type!r}; None loads the bare model)"
        )


def load_models(
    base_model: str,
    adapters: list[AdapterSpec],
    device: str = "auto",
    dtype: str = "float32",
) -> tuple[nn.Module, Any]:
    """The base model (eager attention, eval mode) with every adapter loaded unmerged, and its tokenizer.

    The head class follows the first adapter's ``task_type`` (causal LM, sequence classification, ...),
    so that the saved tensor names match; without adapters the bare model (`AutoModel`: the same attention).
    """
    import torch
    from transformers import AutoTokenizer

    import ina

    names = [spec.name for spec in adapters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--adapter names must be unique; {duplicates} given more than once")
    configs = [ina.read_adapter_config(spec.path) for spec in adapters]
    task_types = {str(c.task_type) if c.task_type else None for c in configs}
    if len(task_types) > 1:
        raise ValueError(
            f"--adapter: all adapters must share one task_type (one base model runs them all); got "
            f"{sorted(map(str, task_types))}"
        )
    task_type = next(iter(task_types)) if task_types else None
    path = resolve_base_model(base_model)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"--dtype must be a torch dtype name such as float32 or bfloat16; got {dtype!r}")
    kwargs: dict[str, Any] = {"attn_implementation": "eager", "dtype": torch_dtype}
    if task_type == "SEQ_CLS":
        labels = next((n for n in (_num_labels(s.path) for s in adapters) if n), None)
        if labels:
            kwargs["num_labels"] = labels
    if not os.path.exists(path) and os.environ.get("HF_HUB_OFFLINE") == "1":
        hint = " (offline: give a local folder, or `minilm` / `smollm` for the embedded defaults)"
    else:
        hint = ""
    from transformers.utils import logging as transformers_logging

    # The load report would list the new head as "MISSING"; the adapters' saved head replaces it below.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = _auto_class(task_type).from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise ValueError(f"--base_model {base_model!r}: cannot load it{hint}: {error}") from error
    finally:
        transformers_logging.set_verbosity(verbosity)
    for spec in adapters:
        try:
            model = ina.load_adapter(model, spec.path, adapter_name=spec.name)
        except (ValueError, KeyError, RuntimeError) as error:
            raise ValueError(
                f"--adapter {spec.name}={spec.path}: cannot load it onto --base_model {base_model!r}; was it trained "
                f"on another base model? ({error})"
            ) from error
        check_adapter_loaded(model, spec)
    model.to(device)
    model.eval()
    return model, tokenizer


def adapter_settings(model: nn.Module, name: str) -> dict[str, Any]:
    """The gate settings of loaded adapter ``name``: inhibition ρ, activation, negative slope, r, alpha."""
    config = model.peft_config[name]
    return {
        "inhibition": float(getattr(config, "inhibition", 0.0)),
        "activation": getattr(config, "activation", "identity"),
        "negative_slope": float(getattr(config, "negative_slope", 0.01)),
        "r": config.r,
        "lora_alpha": config.lora_alpha,
    }


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary file, then rename)."""
    write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
