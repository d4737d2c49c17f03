"""Server settings, written once: one validated dataclass; `ina serve`'s flags are generated from it.

A field's ``metadata`` carries what the command line needs: ``help``, and optionally ``flag`` (False:
not a flag; else the flag when it is not ``--<field name>``), ``metavar``, ``choices`` and ``append``
(a repeatable flag). See `ina.serve.cli`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ina.foundation.adapters import BASE_ADAPTER
from ina.foundation.errors import UsageError
from ina.foundation.models import DTYPES

API_KEY_ENV = "INA_API_KEY"
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

__all__ = ["API_KEY_ENV", "BASE_ADAPTER", "ServeSettings", "SettingsError"]


class SettingsError(UsageError):
    """Every problem found in the settings, reported together."""


def _option(default: object, help: str | None = None, **cli: object) -> dataclasses.Field:  # type: ignore[type-arg]
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclasses.dataclass
class ServeSettings:
    """How `ina serve` runs.

    ``adapters`` maps a model id (the request's ``model``) to an adapter folder; the base model is
    served as ``base_model_id``. Adapters are loaded only from these start-up paths.
    """

    base_model: str | None = _option(None, "base model folder or name (default: the embedded model)")
    adapters: dict[str, str] = dataclasses.field(
        default_factory=dict,
        metadata={
            "flag": "--adapter",
            "append": True,
            "metavar": "NAME=PATH",
            "help": "serve the adapter in folder PATH as model id NAME (repeat for more adapters)",
        },
    )
    base_model_id: str | None = _option(None, "model id of the base (default: its folder name)")
    host: str = _option("127.0.0.1", "address to bind (default 127.0.0.1: this machine only)")
    port: int = _option(8000)
    api_key: str | None = _option(
        None,
        "require `Authorization: Bearer KEY` on every route but /health (default: $INA_API_KEY, else none)",
    )
    max_tokens_cap: int = _option(1024, "largest max_tokens a request may ask for")
    default_max_tokens: int = _option(256, flag=False)
    max_n: int = _option(8, flag=False)
    max_batch_size: int = _option(32, "rows decoded together")
    batch_window_ms: float = _option(5.0, "how long to gather requests into a batch")
    max_queue: int = _option(256, "requests allowed to wait (more get 503)")
    max_body_bytes: int = _option(1_000_000, "largest request body (more get 413)")
    max_attention_tokens: int = _option(
        128, "longest text /v1/attention maps, in tokens (more get 400); its answer grows with the square"
    )
    dtype: str = _option("auto", "auto (float32 on CPU), float32, bfloat16, float16, float64")
    device: str = _option("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    num_threads: int | None = _option(
        None, "torch CPU threads (default: torch's choice; 1 suits tiny models)"
    )
    log_level: str = _option("info", choices=LOG_LEVELS)
    unserved: dict[str, str] = dataclasses.field(default_factory=dict, metadata={"flag": False})
    """Model ids a user may expect but this server does not serve, each with the reason (a 404 says it)."""

    def __post_init__(self) -> None:
        problems = []
        for name in self.adapters:
            if not ADAPTER_NAME.match(name) or name == BASE_ADAPTER:
                problems.append(
                    f"--adapter NAME must be 1-64 letters, digits, '_' or '-' and not {BASE_ADAPTER!r}; got {name!r}"
                )
        for name, path in self.adapters.items():
            folder = Path(path)
            if not folder.exists():
                where = "" if folder.is_absolute() else f" in {Path.cwd()}"
                problems.append(
                    f"--adapter {name}={path}: no such folder{where}; give the path of a folder "
                    "written by save_pretrained (e.g. `ina finetune`'s --output_dir)"
                )
            elif not folder.is_dir():
                problems.append(f"--adapter {name}={path} is a file; give the folder that holds it")
            elif not (folder / "adapter_config.json").is_file():
                problems.append(
                    f"--adapter {name}={path}: the folder holds no adapter_config.json; give a folder written "
                    "by save_pretrained (e.g. `ina finetune`'s --output_dir)"
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
            ("max_attention_tokens", 1),
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value < low:
                problems.append(f"--{field} must be an integer >= {low}; got {value!r}")
        if isinstance(self.port, int) and self.port > 65535:
            problems.append(f"--port must be an integer in 0..65535 (0: any free port); got {self.port}")
        if self.batch_window_ms < 0:
            problems.append(f"--batch_window_ms must be >= 0; got {self.batch_window_ms!r}")
        if self.dtype not in DTYPES:
            problems.append(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.log_level not in LOG_LEVELS:
            problems.append(f"--log_level must be one of {', '.join(LOG_LEVELS)}; got {self.log_level!r}")
        if problems:
            raise SettingsError("invalid serve settings:\n  " + "\n  ".join(problems))
        self.default_max_tokens = min(self.default_max_tokens, self.max_tokens_cap)
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
