"""Registers InA with PEFT (``peft_type: "INA"``) and guards against running InA adapters as LoRA.

Importing ``ina`` runs :func:`register` once. Without it, PEFT does not know ``"INA"`` and refuses to
load such an adapter, which is what we want: an InA adapter must never run as plain LoRA.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import warnings
from collections.abc import Iterator
from typing import Any

from peft import LoraConfig, PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

PEFT_TYPE_NAME = "INA"
AUTHORS_KEY = "lora_inhibition"  # the authors' extra key in a `"peft_type": "LORA"` config


class AuthorsFormatError(ValueError):
    """Raised when stock PEFT is asked to load an adapter saved by the authors' code with ρ > 0."""


def _add_peft_type(name: str) -> enum.Enum:
    """Add a member to PEFT's `PeftType` enum (PEFT offers no public way to do so)."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType  # type: ignore[attr-defined]
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


def _guard_authors_format(original: Any) -> Any:
    def check_kwargs(cls: type, **kwargs: Any) -> dict[str, Any]:
        inhibition = kwargs.get(AUTHORS_KEY)
        if inhibition:
            raise AuthorsFormatError(
                f"this adapter was saved by the InA authors' code (`peft_type: LORA` with "
                f"`{AUTHORS_KEY}: {inhibition}`); loading it as `LoraConfig` would run it as plain LoRA. "
                "Load it with `ina.load_adapter(model, path)` (reads it as InA with ρ = "
                f"{inhibition}), or convert it once with `ina convert SRC DST`."
            )
        kwargs.pop(AUTHORS_KEY, None)  # ρ = 0 is exactly LoRA
        return original(**kwargs)

    check_kwargs.__ina_guard__ = True  # type: ignore[attr-defined]
    return classmethod(check_kwargs)


def register() -> None:
    """Make ``peft_type: "INA"`` known to PEFT (idempotent)."""
    from ina.core.config import InAConfig
    from ina.core.model import InAModel

    peft_type = _add_peft_type(PEFT_TYPE_NAME)
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = InAConfig
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = InAModel
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = InAModel.prefix
    if not getattr(LoraConfig.check_kwargs, "__ina_guard__", False):
        LoraConfig.check_kwargs = _guard_authors_format(LoraConfig.check_kwargs)
    if not getattr(PeftModel.__init__, "__ina_guard__", False):
        PeftModel.__init__ = _quiet_for_ina(PeftModel.__init__)  # type: ignore[method-assign]


def _quiet_for_ina(original: Any) -> Any:
    """``PeftModel.__init__`` without the FutureWarning it causes, for an InA config only.

    ``PeftModel.__init__`` (PEFT 0.21, peft_model.py) reads ``model.is_gradient_checkpointing``, which
    transformers 5 deprecated; every ``get_peft_model`` and ``PeftModel.from_pretrained`` on a
    transformers model goes through it. The user did nothing deprecated, so for InA it is not shown;
    other PEFT methods, and a user's own read of the property, keep the warning.
    """

    @functools.wraps(original)
    def init(self: Any, model: Any, peft_config: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(peft_config, "peft_type", None) != PEFT_TYPE_NAME:
            return original(self, model, peft_config, *args, **kwargs)
        with without_peft_deprecations():
            return original(self, model, peft_config, *args, **kwargs)

    init.__ina_guard__ = True  # type: ignore[attr-defined]
    return init


@contextlib.contextmanager
def without_peft_deprecations() -> Iterator[None]:
    """Run the block without the FutureWarning PEFT causes by reading transformers' `is_gradient_checkpointing`.

    PEFT 0.21 reads the deprecated property whenever it wraps or loads a model; the warning is not ours
    to fix. InA models are built without it (`register`); this block serves other wrapping, e.g. of a
    `LoraConfig`.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
