"""Server settings: one validated dataclass that `ina serve`'s flags and `create_app` share."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

API_KEY_ENV = "INA_API_KEY"
BASE_ADAPTER = "__base__"
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SettingsError(ValueError):
    """Every problem found in the settings, reported together."""


@dataclasses.dataclass
class ServeSettings:
    """How `ina serve` runs.

    ``adapters`` maps a model id (the request's ``model``) to an adapter folder; the base model is
    served as ``base_model_id``. Adapters are loaded only from these start-up paths.
    """

    base_model: str | None = None
    adapters: dict[str, str] = dataclasses.field(default_factory=dict)
    base_model_id: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    max_n: int = 8
    max_batch_size: int = 32
    batch_window_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 1_000_000
    dtype: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        for name in self.adapters:
            if not ADAPTER_NAME.match(name) or name == BASE_ADAPTER:
                problems.append(
                    f"--adapter NAME must be 1-64 letters, digits, '_' or '-' and not {BASE_ADAPTER!r}; got {name!r}"
                )
        for name, path in self.adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                problems.append(
                    f"--adapter {name}={path}: no adapter_config.json in that folder; "
                    "give a folder written by save_pretrained (e.g. `ina finetune`'s output)"
                )
        if self.base_model_id is not None and self.base_model_id in self.adapters:
            problems.append(
                f"the base model id {self.base_model_id!r} is also an adapter name; rename the adapter"
            )
        for field, low in (
            ("port", 0),
            ("max_tokens_cap", 1),
            ("default_max_tokens", 1),
            ("max_n", 1),
            ("max_batch_size", 1),
            ("max_queue", 1),
            ("max_body_bytes", 1024),
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value < low:
                problems.append(f"--{field} must be an integer >= {low}; got {value!r}")
        if self.batch_window_ms < 0:
            problems.append(f"--batch_window_ms must be >= 0; got {self.batch_window_ms!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16", "float64"):
            problems.append(
                f"--dtype must be one of auto, float32, bfloat16, float16, float64; got {self.dtype!r}"
            )
        if problems:
            raise SettingsError("invalid serve settings:\n  " + "\n  ".join(problems))
        self.default_max_tokens = min(self.default_max_tokens, self.max_tokens_cap)
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
