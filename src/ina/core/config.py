"""`InAConfig`: LoRA's configuration plus the inhibition gate, validated on construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig
from peft.utils import PeftType

from ina.core.functional import ACTIVATIONS

# init_lora_weights values that keep B = 0 (a fresh adapter is the base model) and leave W0 untouched.
SUPPORTED_INITS: tuple[Any, ...] = (True, False, "gaussian")


GATED_LAYERS = "nn.Linear, transformers' Conv1D and nn.Embedding layers"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_names(value: Any) -> bool:
    return isinstance(value, (list, tuple, set)) and all(isinstance(name, str) for name in value)


class InAConfigError(ValueError):
    """Raised with every problem of an `InAConfig` at once, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid InAConfig:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class InAConfig(LoraConfig):
    """Configuration of an InA adapter: everything `peft.LoraConfig` offers that InA can honour, plus the gate.

    ``y = W0·x + b + s · B · f(A·x − ρ · max_r(A·x))`` with ``s = lora_alpha / r`` (``/ sqrt(r)`` with
    ``use_rslora``), ``ρ = inhibition`` and ``f = activation`` (Kang et al., Neural Networks 2024).
    ``inhibition = 0`` switches the gate off: the adapter is then exactly LoRA (and can be merged).

    Args:
        inhibition: ρ, the share of each token's largest rank activation subtracted before ``f``; in [0, 1).
        activation: ``f``: ``"leaky_relu"`` (the authors' code), ``"gelu"`` (the paper's text) or ``"identity"``.
        negative_slope: slope of ``leaky_relu`` below zero.
    """

    inhibition: float = field(
        default=0.3,
        metadata={
            "help": "Inhibition ratio ρ in [0, 1): the share of each token's largest rank activation "
            "subtracted before the activation; 0 switches the gate off (exactly LoRA)."
        },
    )
    activation: str = field(
        default="leaky_relu",
        metadata={"help": f"Gate activation f, one of {list(ACTIVATIONS)}."},
    )
    negative_slope: float = field(
        default=0.01, metadata={"help": "Negative slope of leaky_relu (only used by that activation)."}
    )

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InAConfigError(problems)
        super().__post_init__()
        self.peft_type = PeftType.INA  # type: ignore[attr-defined]  # added by ina.core.registry

    def problems(self) -> list[str]:
        """Every rule this configuration breaks, as messages naming the field, the rule and the value."""
        problems = []
        if not isinstance(self.inhibition, (int, float)) or not 0 <= self.inhibition < 1:
            problems.append(f"`inhibition` must be a number in [0, 1); got {self.inhibition!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"`activation` must be one of {list(ACTIVATIONS)}; got {self.activation!r}")
        if not isinstance(self.negative_slope, (int, float)) or self.negative_slope < 0:
            problems.append(f"`negative_slope` must be a number ≥ 0; got {self.negative_slope!r}")
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            problems.append(f"`r` must be a positive integer; got {self.r!r}")
        if not _is_number(self.lora_alpha):
            problems.append(f"`lora_alpha` must be a number; got {self.lora_alpha!r}")
        for pattern in ("rank_pattern", "alpha_pattern"):
            value = getattr(self, pattern)
            if not isinstance(value, dict):
                problems.append(
                    f"`{pattern}` must be a mapping {{module name pattern: number}}; got {value!r}"
                )
            elif not all(_is_number(number) for number in value.values()):
                problems.append(f"`{pattern}` values must be numbers; got {value!r}")
        if isinstance(self.rank_pattern, dict):
            for name, rank in self.rank_pattern.items():
                if not isinstance(rank, int) or rank <= 0:
                    problems.append(f"`rank_pattern[{name!r}]` must be a positive integer; got {rank!r}")
        for names in ("target_modules", "exclude_modules", "modules_to_save"):
            value = getattr(self, names)
            if not (
                value is None or (isinstance(value, str) and names != "modules_to_save") or _is_names(value)
            ):
                problems.append(
                    f"`{names}` must be a list of module names or a regular expression; got {value!r}"
                )
        if self.bias not in ("none", "all", "lora_only"):
            problems.append(f"`bias` must be 'none', 'all' or 'lora_only'; got {self.bias!r}")
        if self.megatron_config:
            problems.append(
                f"`megatron_config` must be unset: InA gates {GATED_LAYERS} only; got {self.megatron_config!r}"
            )
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            problems.append(f"`lora_dropout` must be in [0, 1); got {self.lora_dropout!r}")
        if self.use_dora:
            problems.append(
                "`use_dora` must be False: DoRA rescales the weight column-wise and would bypass the "
                "inhibition gate; got True"
            )
        if self.init_lora_weights not in SUPPORTED_INITS:
            problems.append(
                f"`init_lora_weights` must be one of {list(SUPPORTED_INITS)} (other schemes rewrite W0 or "
                f"start from a non-zero adapter); got {self.init_lora_weights!r}"
            )
        if self.target_parameters:
            problems.append(
                f"`target_parameters` must be empty: InA adapts modules, not bare parameters; "
                f"got {self.target_parameters!r}"
            )
        # Other LoRA variants (aLoRA, VeLoRA, Arrow, BD-LoRA, ...) replace the forward pass that the gate lives in.
        for f in dataclasses.fields(LoraConfig):
            value = getattr(self, f.name, None)
            if (
                f.metadata.get("is_lora_variant")
                and f.name != "use_dora"
                and value is not None
                and value is not False
            ):
                problems.append(
                    f"`{f.name}` must be unset: that LoRA variant replaces the forward pass the inhibition "
                    f"gate lives in; got {getattr(self, f.name)!r}"
                )
        return problems

    @property
    def is_linear(self) -> bool:
        """True when the adapter is a linear map of the input (ρ = 0), so it can be merged into W0.

        For ρ > 0 the threshold ``ρ·max_r(h)`` makes the branch non-linear even with ``f = identity``.
        """
        return self.inhibition == 0
