"""Adapters as users name them: ``NAME=PATH`` specs, the adapter flags, and the ``InAConfig`` builder.

The flags (``--lora_r``, ``--lora_alpha``, ``--lora_dropout``, ``--lora_target_modules``,
``--inhibition``, ``--activation``, ``--modules_to_save``) are declared once, in `AdapterArguments`,
a dataclass that ``transformers.HfArgumentParser`` turns into command-line flags and config-file
keys. The range rules live in `ina.core.config.InAConfig`; `inhibition_config` reports its errors
under the flags' names. This module imports no framework at import time.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError

BASE_ADAPTER = "__base__"  # the adapter name meaning "no adapter", as in PEFT's mixed-batch API

# Attention projections by architecture family, the default targets when none are named.
ATTENTION_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("query", "key", "value"),  # BERT, RoBERTa, ELECTRA, MiniLM
    ("query_proj", "key_proj", "value_proj"),  # DeBERTa-v2/v3
    ("q_proj", "k_proj", "v_proj"),  # LLaMA, Mistral, Qwen, OPT, BART, SmolLM
    ("q", "k", "v"),  # T5
    ("query_key_value",),  # BLOOM, Falcon, GPT-NeoX
    ("c_attn",),  # GPT-2
    ("in_proj",),  # DeBERTa v1
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ("Wqkv",),  # ModernBERT, MPT
)

# Flag names of InAConfig fields, so that its errors name what the user typed.
_FLAG_OF_FIELD = {
    "r": "--lora_r",
    "lora_alpha": "--lora_alpha",
    "lora_dropout": "--lora_dropout",
    "target_modules": "--lora_target_modules",
    "inhibition": "--inhibition",
    "activation": "--activation",
}


class AdapterSpecError(UsageError):
    """A ``NAME=PATH`` adapter argument that cannot be used."""


@dataclass(frozen=True)
class AdapterSpec:
    """One ``--adapter NAME=PATH`` argument: the name requests use and the folder it is read from."""

    name: str
    path: Path


ADAPTER_CONFIG = "adapter_config.json"
_SAVED_BY = (
    "give a folder that save_pretrained wrote (`ina finetune`'s --output_dir, `ina glue`, `ina sweep`)"
)


def adapter_folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not an adapter folder (missing, a file, no adapter_config.json) with the fix; None if it is.

    The one wording of these errors for every command (``--adapter`` specs, ``ina info PATH``, ...).
    """
    folder = Path(path)
    if not folder.exists():
        where = "" if folder.is_absolute() else f" in {Path.cwd()}"
        return f"no such folder{where}; {_SAVED_BY}"
    if not folder.is_dir():
        return "is a file, not a folder; give the adapter folder that holds it"
    if not (folder / ADAPTER_CONFIG).is_file():
        return f"the folder holds no {ADAPTER_CONFIG}; {_SAVED_BY}"
    return None


def _split(value: str, flag: str, bare_path: bool) -> tuple[str, str, bool]:
    """``(name, path, bare)``: ``bare`` when ``value`` is a PATH alone, named after the folder it means."""
    name, sep, path = value.partition("=")
    bare = not sep and bare_path
    if bare:
        path = value
        name = Path(os.path.abspath(value)).name if value.strip() else ""  # `.`, `..`, `run/` alike
    name, path = name.strip(), path.strip()
    if not name or not path:
        example = (
            f"{_usable(Path(os.path.abspath(value)).name)}={value}" if value.strip() and not sep else None
        )
        raise AdapterSpecError(
            f"{flag} must be NAME=PATH (e.g. {flag} {example or 'ina30=runs/ina-0.3'}); got {value!r}"
        )
    return name, path, bare


def split_adapter_spec(value: str, flag: str = "--adapter", bare_path: bool = True) -> tuple[str, str]:
    """``NAME=PATH`` → ``(name, path)``; a bare ``PATH`` is named after its folder when ``bare_path``."""
    name, path, _ = _split(value, flag, bare_path)
    return name, path


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot name an adapter, or None."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):  # PEFT's module dictionaries refuse dots
        return f"NAME must use letters, digits, '_' and '-' only; got {name!r}"
    if name == "base" or name.startswith("__"):
        return f"the name {name!r} is reserved for the base model"
    if "lora_".startswith(
        name
    ):  # PEFT finds adapter weights by the prefix "lora_"; such a name may reinitialise them
        return f"the name {name!r} is part of PEFT's parameter prefix 'lora_'"
    return None


def _usable(name: str) -> str:
    """``name`` made usable as an adapter name (for a suggestion in an error)."""
    usable = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return usable if usable and _name_problem(usable) is None else "adapter1"


def parse_adapter_spec(value: str, flag: str = "--adapter", bare_path: bool = True) -> AdapterSpec:
    """``NAME=PATH`` (or a bare ``PATH``, named after its folder) → `AdapterSpec`.

    Raises `AdapterSpecError` naming ``flag`` when the folder holds no adapter or the name is unusable.
    """
    name, path, bare = _split(value, flag, bare_path)
    problem = _name_problem(name)
    if problem and not bare:  # a NAME the user chose: its rule first, whatever the folder
        raise AdapterSpecError(f"{flag} {value!r}: {problem}; choose another NAME (e.g. ina30)")
    if folder_problem := adapter_folder_problem(path):
        raise AdapterSpecError(f"{flag} {value!r}: {folder_problem}")
    if problem:  # a bare PATH, named after its folder
        raise AdapterSpecError(
            f"{flag} {value!r}: a bare PATH is named after its folder, and {problem}; name it yourself, "
            f"e.g. {flag} {_usable(name)}={value}"
        )
    return AdapterSpec(name, Path(path))


def parse_adapter_specs(
    values: Iterable[str], flag: str = "--adapter", bare_path: bool = True, check: bool = True
) -> dict[str, Path]:
    """Every ``NAME=PATH`` in ``values`` as ``{name: path}``, in order; a name given twice is an error.

    ``check=False`` only splits (the caller validates names and folders, e.g. `ServeSettings`).
    """
    adapters: dict[str, Path] = {}
    for value in values:
        if check:
            spec = parse_adapter_spec(value, flag, bare_path)
        else:
            spec = AdapterSpec(*split_adapter_spec(value, flag, bare_path))
        if spec.name in adapters:
            raise AdapterSpecError(
                f"{flag} name {spec.name!r} is given twice; give each adapter its own NAME (NAME=PATH)"
            )
        adapters[spec.name] = Path(spec.path)
    return adapters


def split_list(value: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` → ``["a", "b"]`` (blanks dropped); ``None`` or empty → ``None``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip() for item in items if item and item.strip()]
    return names or None


@dataclass
class AdapterArguments:
    """The InA adapter's flags, shared by every training command (names as in alpaca-lora / the authors')."""

    lora_r: int = field(default=8, metadata={"help": "rank r of the adapter"})
    lora_alpha: float = field(default=16, metadata={"help": "α; the branch is scaled by α/r"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the adapter's input, in [0, 1)"})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated module names to adapt, or all-linear (default: the attention "
            "query/key/value projections of the architecture, e.g. query,key,value for BERT)"
        },
    )
    inhibition: float = field(
        default=0.3, metadata={"help": "inhibition ratio ρ in [0, 1); 0 is exactly LoRA"}
    )
    activation: str = field(
        default="leaky_relu", metadata={"help": "gate activation: leaky_relu (the authors'), gelu, identity"}
    )
    modules_to_save: str | None = field(
        default=None,
        metadata={
            "help": "comma-separated extra modules trained in full and saved with the adapter "
            "(a task head is always included by PEFT)"
        },
    )

    def __post_init__(self) -> None:
        problems = range_problems(self) + adapter_problems(self)  # before any model is loaded
        if problems:
            raise UsageError("invalid adapter options:\n" + "\n".join(f"  - {p}" for p in problems))


def adapter_problems(arguments: AdapterArguments) -> list[str]:
    """What `InAConfig` would refuse in ``arguments`` beyond the ranges every recipe checks itself:
    the gate ``--activation`` and ``--lora_alpha``. Needs no model, so a typo costs no model load."""
    from ina.core.functional import ACTIVATIONS

    problems = []
    if arguments.activation not in ACTIVATIONS:
        problems.append(f"--activation must be one of {list(ACTIVATIONS)}; got {arguments.activation!r}")
    if not arguments.lora_alpha > 0:
        problems.append(f"--lora_alpha must be > 0; got {arguments.lora_alpha}")
    return problems


def range_problems(arguments: AdapterArguments) -> list[str]:
    """The range rules of the adapter flags (``--lora_r``, ``--lora_dropout``, ``--inhibition``), in flag names."""
    problems = []
    if arguments.lora_r < 1:
        problems.append(f"--lora_r must be at least 1; got {arguments.lora_r}")
    if not 0 <= arguments.lora_dropout < 1:
        problems.append(f"--lora_dropout must be in [0, 1); got {arguments.lora_dropout}")
    if not 0 <= arguments.inhibition < 1:
        problems.append(f"--inhibition must be in [0, 1) (0 is exactly LoRA); got {arguments.inhibition}")
    return problems


def _is_linear(module: Any) -> bool:
    from torch import nn

    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def target_modules_for(
    model: Any, requested: Sequence[str] | None, flag: str = "--lora_target_modules"
) -> list[str] | str:
    """``requested``, checked against ``model``'s linear layers, or the attention projections it has; errors name ``flag``."""
    if requested and list(requested) == ["all-linear"]:
        return "all-linear"
    leaves = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module)}
    if requested:
        unknown = [
            name for name in requested if name not in leaves and not any(n.endswith(name) for n in leaves)
        ]
        if unknown:
            raise UsageError(
                f"{flag}: {unknown} are not linear layers of this model; its linear layers are "
                f"{sorted(leaves)} (e.g. q_proj,v_proj for LLaMA, query_key_value for BLOOM)"
            )
        return list(requested)
    for family in ATTENTION_PROJECTIONS:
        if all(name in leaves for name in family):
            return list(family)
    raise UsageError(
        f"{flag}: no known attention projections found in {type(model).__name__}; name the layers "
        f"to adapt, e.g. {flag} {','.join(sorted(leaves)[:3])} (linear layers: {sorted(leaves)})"
    )


def inhibition_config(
    arguments: AdapterArguments, model: Any, task_type: str | None = None, **overrides: Any
) -> Any:
    """The `ina.InAConfig` of ``arguments`` for ``model``; its problems raised as one `UsageError` in flag names."""
    from ina.core.config import InAConfig, InAConfigError

    settings: dict[str, Any] = {
        "r": arguments.lora_r,
        "lora_alpha": arguments.lora_alpha,
        "lora_dropout": arguments.lora_dropout,
        "target_modules": target_modules_for(model, split_list(arguments.lora_target_modules)),
        "inhibition": arguments.inhibition,
        "activation": arguments.activation,
        "modules_to_save": split_list(arguments.modules_to_save),
        "task_type": task_type,
    }
    settings.update(overrides)
    try:
        return InAConfig(**settings)
    except InAConfigError as error:
        message = str(error)
        for name, flag in _FLAG_OF_FIELD.items():
            message = message.replace(f"`{name}`", f"`{name}` ({flag})")
        raise UsageError(message) from error


@contextlib.contextmanager
def using_adapter(model: Any, name: str) -> Iterator[None]:
    """Run the block with adapter ``name`` of a `PeftModel` active (`BASE_ADAPTER`: adapters switched off)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield
    elif name == BASE_ADAPTER:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield
