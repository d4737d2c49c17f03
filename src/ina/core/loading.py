"""Reading InA adapters in every format they exist in, checking them, and converting the authors' format.

Three formats reach us: ours (``"peft_type": "INA"``); the authors' (``"peft_type": "LORA"`` plus
``"lora_inhibition": ρ``, leaky_relu 0.01); and plain LoRA (no such key), which is InA with ρ = 0,
never the authors' default of 0.3.

Every load first runs :func:`check_adapter_folder` (no model needed): a damaged, tampered or
mislabelled folder is one :class:`AdapterFileError` naming the file, the rule, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft import PeftModel
from torch import nn

from ina.core.config import InAConfig
from ina.core.layer import MARKER, marker_problem, marker_tensors
from ina.core.registry import AUTHORS_KEY, PEFT_TYPE_NAME, without_peft_deprecations

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES: tuple[str, ...] = ("adapter_model.safetensors", "adapter_model.bin")
# Run records that may hold ``CHECKSUM_KEY: {file name: sha256}`` for the adapter files beside them.
SUMMARY_NAMES: tuple[str, ...] = ("training_summary.json", "result.json")
CHECKSUM_KEY = "adapter_sha256"


class AdapterFileError(ValueError):
    """An adapter folder or file that cannot be loaded safely; the message is one line (file, rule, value, fix)."""


def _fail(file: Path | str, rule: str, value: Any, fix: str) -> AdapterFileError:
    return AdapterFileError(f"{file}: {rule}; got {value}. {fix}")


def adapter_checksums(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{file name: sha256 hex}`` of the weights file(s) of the adapter in folder ``path``.

    A training run records this under ``"adapter_sha256"`` in its summary; every load compares it.
    """
    folder = Path(path)
    sums = {}
    for name in WEIGHTS_NAMES:
        file = folder / name
        if file.is_file():
            digest = hashlib.sha256()
            with file.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            sums[name] = digest.hexdigest()
    return sums


def check_adapter_folder(path: str | os.PathLike[str]) -> InAConfig:
    """Check the adapter folder ``path`` without a model and return its config (as `InAConfig`).

    The folder exists; ``adapter_config.json`` is valid JSON with a known ``peft_type`` and valid
    values; the weights file is readable and every tensor finite; the ``ina_inhibition`` markers
    agree with the config; checksums recorded in a run summary beside it match. Raises
    :class:`AdapterFileError`.
    """
    folder = Path(path)
    if not folder.exists():
        raise _fail(
            folder,
            "the adapter folder must exist",
            "no such path",
            f"Check the path (a folder holding {CONFIG_NAME} and adapter_model.safetensors).",
        )
    if not folder.is_dir():
        raise _fail(
            folder,
            "an adapter must be a folder",
            "a file",
            f"Pass the folder that holds this file and {CONFIG_NAME}.",
        )
    config = read_adapter_config(folder)
    weights = next((folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise _fail(
            folder,
            f"an adapter folder must hold {' or '.join(WEIGHTS_NAMES)}",
            "neither",
            "Copy the complete folder that save_pretrained wrote.",
        )
    _check_checksums(folder, weights)
    tensors = _read_tensors(weights)
    _check_tensors(weights, tensors, config)
    return config


def _check_checksums(folder: Path, weights: Path) -> None:
    for name in SUMMARY_NAMES:
        summary = folder / name
        try:
            recorded = json.loads(summary.read_text()).get(CHECKSUM_KEY) if summary.is_file() else None
        except (OSError, ValueError, AttributeError):  # an unreadable run record is not part of the adapter
            continue
        if not isinstance(recorded, Mapping) or weights.name not in recorded:
            continue
        actual = adapter_checksums(folder).get(weights.name)
        if actual != recorded[weights.name]:
            raise _fail(
                weights,
                f"its sha256 must match the one recorded in {name}",
                f"{actual} (recorded {recorded[weights.name]})",
                "The file was changed or damaged after training: copy it again from the run, or retrain.",
            )


def _read_tensors(weights: Path) -> dict[str, Any]:
    import torch

    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(weights), device="cpu")
        else:
            tensors = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, garbled or foreign files fail in many ways
        # torch.load's own message suggests weights_only=False, which would run code from the file
        reason = (
            " ".join(str(error).split())[:200] if weights.suffix == ".safetensors" else type(error).__name__
        )
        raise _fail(
            weights,
            "the weights file must be readable",
            f"an unreadable file ({reason})",
            "Copy it again from the run that saved it, or retrain.",
        ) from error
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise _fail(
            weights,
            "the weights file must hold named tensors",
            type(tensors).__name__,
            "Save the adapter with save_pretrained.",
        )
    if not tensors:
        raise _fail(
            weights,
            "the weights file must hold the adapter's tensors",
            "no tensors",
            "Copy the complete file from the run that saved it, or retrain.",
        )
    return tensors


def _check_tensors(weights: Path, tensors: dict[str, Any], config: InAConfig) -> None:
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise _fail(
                weights,
                "every adapter weight must be finite",
                f"{bad} NaN/inf value(s) in tensor {name!r}",
                "The training diverged or the file is damaged: retrain (lower the learning rate) or "
                "use an earlier checkpoint.",
            )
    problem = marker_problem(tensors, config.inhibition)
    if problem:
        raise _fail(
            weights,
            f"each `{MARKER}` tensor must equal the config's inhibition",
            problem,
            f"Use the {CONFIG_NAME} saved with these weights.",
        )


def read_adapter_config(path: str | os.PathLike[str]) -> InAConfig:
    """The `InAConfig` of the adapter saved in folder ``path``, whatever its format.

    Raises :class:`AdapterFileError` for a missing or malformed ``adapter_config.json``, an unknown
    ``peft_type`` or values InA cannot honour.
    """
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise _fail(
            config_file,
            f"an adapter folder must hold {CONFIG_NAME}",
            "no such file",
            "Pass the folder that save_pretrained wrote.",
        )
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = " ".join(str(error).split())[:160]
        raise _fail(
            config_file,
            "must be valid UTF-8 JSON",
            f"an unreadable file ({reason})",
            "Restore it from the run that saved the adapter.",
        ) from error
    if not isinstance(data, dict):
        raise _fail(
            config_file,
            "must hold a JSON object",
            type(data).__name__,
            "Restore it from the run that saved the adapter.",
        )
    peft_type = data.get("peft_type")
    if peft_type == "LORA":
        authors = data.pop(AUTHORS_KEY, 0.0) or 0.0
        if not isinstance(authors, (int, float)) or isinstance(authors, bool):
            raise _fail(
                config_file,
                f"`{AUTHORS_KEY}` must be a number in [0, 1)",
                repr(authors),
                "Restore it from the run that saved the adapter.",
            )
        data["inhibition"] = float(authors)
        data["activation"], data["negative_slope"] = "leaky_relu", 0.01
    elif peft_type != PEFT_TYPE_NAME:
        raise _fail(
            config_file,
            f"`peft_type` must be {PEFT_TYPE_NAME!r} (InA) or 'LORA' (the authors' format or plain LoRA)",
            repr(peft_type),
            "Load adapters of other PEFT methods with peft.PeftModel.from_pretrained, not as InA.",
        )
    fields = {f.name for f in dataclasses.fields(InAConfig) if f.init}
    try:
        return InAConfig(**{k: v for k, v in data.items() if k in fields and k != "peft_type"})
    except (ValueError, TypeError) as error:  # InAConfigError lists every problem, one per line
        problems = getattr(error, "problems", None) or [" ".join(str(error).split())]
        raise _fail(
            config_file,
            "its values must form a valid InAConfig",
            "; ".join(problems),
            "Restore it from the run that saved the adapter, or fix those fields.",
        ) from error


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    adapter_name: str = "default",
    is_trainable: bool = False,
) -> PeftModel:
    """Load the adapter in ``path`` (any format, see module doc) onto ``model`` and return the `PeftModel`.

    ``model`` is a base model (a new `PeftModel` is made) or a `PeftModel` (the adapter is added to it).
    The folder is checked first (:func:`check_adapter_folder`; raises :class:`AdapterFileError`).
    """
    config = check_adapter_folder(path)
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
    """Rewrite the adapter in ``src`` (any format, checked first) into our format in ``dst``; returns its config.

    Tensors are kept as they are (the names are the same); with ρ > 0, a safetensors file without
    ``ina_inhibition`` markers gets them, and checksums recorded beside it are updated to the new file.
    ``dst`` appears complete or not at all.
    """
    src, dst = Path(src), Path(dst)
    config = check_adapter_folder(src)
    if dst.exists():
        raise FileExistsError(f"destination {str(dst)!r} exists; choose a new folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for item in src.iterdir():
            if item.name != CONFIG_NAME and item.is_file():
                shutil.copy2(item, staging / item.name)
        if _add_markers(staging / WEIGHTS_NAMES[0], config.inhibition):
            _update_checksums(staging)
        config.save_pretrained(str(staging))
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config


def _add_markers(weights: Path, inhibition: float) -> bool:
    """Add the ``ina_inhibition`` markers a safetensors file with ρ > 0 lacks; True if it was rewritten."""
    from safetensors.torch import load_file, save_file

    if not weights.is_file() or inhibition == 0:
        return False
    tensors = load_file(str(weights))
    if any(name.endswith("." + MARKER) for name in tensors):
        return False
    save_file({**tensors, **marker_tensors(tensors, inhibition)}, str(weights), metadata={"format": "pt"})
    return True


def _update_checksums(folder: Path) -> None:
    for name in SUMMARY_NAMES:
        summary = folder / name
        try:
            data = json.loads(summary.read_text()) if summary.is_file() else None
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get(CHECKSUM_KEY), Mapping):
            data[CHECKSUM_KEY] = {**data[CHECKSUM_KEY], **adapter_checksums(folder)}
            summary.write_text(json.dumps(data, indent=2))  # inside the staging folder: atomic with it
