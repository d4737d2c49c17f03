"""Writing the export: a plain PEFT LoRA folder (``"peft_type": "LORA"``) that stock PEFT, vLLM and SGLang load.

``adapter_config.json`` holds only the keys LoRA loaders read (so older PEFT releases and the serving
engines' own readers accept it); ``adapter_model.safetensors`` holds, per adapted layer,
``<module path>.lora_A.weight`` (r × in) and ``.lora_B.weight`` (out × r) under PEFT's names. The prompt
template (``ina_prompt.json``) and the tokenizer files saved with the source travel along. The folder
is assembled in a staging folder next to ``DST`` and renamed into place: it appears complete or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ina.foundation.errors import UsageError
from ina.foundation.files import write_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Files of the source folder that describe how to prompt the model; copied unchanged.
CARRIED = (
    "ina_prompt.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
# LoraConfig keys copied from the source adapter when they are set.
KEPT_KEYS = (
    "task_type",
    "base_model_name_or_path",
    "revision",
    "target_modules",
    "exclude_modules",
    "fan_in_fan_out",
    "layers_to_transform",
    "layers_pattern",
    "modules_to_save",
)


def lora_config(source: Any, rank: int, alpha: float, exact: bool) -> dict[str, Any]:
    """The ``adapter_config.json`` of the export, from the source `InAConfig`.

    A fitted export has one rank ``rank`` and ``lora_alpha = alpha`` for every layer; an exact export
    (ρ = 0) keeps the source's ranks, alphas and rsLoRA setting.
    """
    data = source.to_dict()
    config: dict[str, Any] = {"peft_type": "LORA"}
    for key in KEPT_KEYS:
        value = data.get(key)
        if isinstance(value, set):
            value = sorted(value)
        config[key] = value
    config.update(
        r=int(source.r) if exact else int(rank),
        lora_alpha=float(source.lora_alpha) if exact else float(alpha),
        lora_dropout=0.0,
        bias="none",
        use_rslora=bool(source.use_rslora) if exact else False,
        use_dora=False,
        rank_pattern=dict(source.rank_pattern or {}) if exact else {},
        alpha_pattern=dict(source.alpha_pattern or {}) if exact else {},
        init_lora_weights=True,
        inference_mode=True,
    )
    return config


def tensor_names(layer_name: str) -> tuple[str, str]:
    """PEFT's saved names of a layer's A and B (the adapter name is not part of them)."""
    return f"{layer_name}.lora_A.weight", f"{layer_name}.lora_B.weight"


# What an earlier `ina export lora` leaves in DST: only such a folder may be replaced by --overwrite.
EXPORT_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, "adapter.gguf", "export_report.json", *CARRIED})


def check_destination(src: str | os.PathLike[str], dst: str | os.PathLike[str], overwrite: bool) -> Path:
    """``DST`` as a path, checked before any work: never SRC, never holding or inside SRC, never under a file;
    an existing ``DST`` only with ``overwrite``, and only when it is an earlier export (nothing else in it)."""
    from ina.foundation.files import output_problem, overlap_problem

    path = Path(dst)
    problem = overlap_problem(path, "DST", {"SRC": src}) or output_problem(path, "DST", folder=True)
    if problem:
        raise UsageError(problem + "; nothing was changed")
    if path.is_symlink():
        raise UsageError(
            f"DST {str(path)!r} is a symbolic link; give a real folder path (nothing was changed)"
        )
    if not path.exists():
        return path
    if not overwrite:
        raise UsageError(f"DST {str(path)!r} exists; choose a new folder or pass --overwrite to replace it")
    entries = sorted(item.name for item in path.iterdir())
    foreign = [name for name in entries if name not in EXPORT_FILES or not (path / name).is_file()]
    if "export_report.json" not in entries or foreign:
        what = (
            f"it holds {', '.join(repr(n) for n in foreign[:3])}"
            if foreign
            else "it has no export_report.json"
        )
        raise UsageError(
            f"--overwrite replaces only an earlier export, and DST {str(path)!r} is not one ({what}); "
            "nothing was changed. Choose a new DST, or remove that folder yourself"
        )
    return path


def staging_folder(dst: Path) -> Path:
    """An empty folder next to ``dst`` to assemble the export in."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))


def write_lora(
    folder: Path,
    config: dict[str, Any],
    tensors: Mapping[str, torch.Tensor],
    source: str | os.PathLike[str],
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write the LoRA files into ``folder`` (float32 weights) and carry the source's prompt files along."""
    from safetensors.torch import save_file

    weights = {name: t.detach().to(torch.float32).contiguous().cpu() for name, t in tensors.items()}
    weights.update({name: t.detach().contiguous().cpu() for name, t in (extra_tensors or {}).items()})
    save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(folder / CONFIG_FILE, config)
    for name in CARRIED:
        item = Path(source) / name
        if item.is_file():
            shutil.copy2(item, folder / name)


def source_extras(source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of the source that are not LoRA factors (``modules_to_save`` copies), to keep in the export."""
    from safetensors.torch import load_file

    from ina.core.layer import MARKER

    file = Path(source) / WEIGHTS_FILE
    if not file.is_file():
        return {}
    return {k: v for k, v in load_file(str(file)).items() if ".lora_" not in k and f".{MARKER}" not in k}


def publish(staging: Path, dst: Path) -> None:
    """Move the finished ``staging`` folder to ``dst`` (replacing an old ``dst`` only once the new one is whole).

    The folder and its files get the permissions a plain ``mkdir`` / ``open`` would give them.
    """
    from ina.foundation.files import current_umask

    mask = current_umask()
    for item in staging.iterdir():
        os.chmod(item, 0o666 & ~mask)
    os.chmod(staging, 0o777 & ~mask)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.rmdir(old)
        os.replace(dst, old)
    try:
        os.replace(staging, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
