"""Server settings, written once: one validated dataclass; `ina serve`'s flags are generated from it.

A field's ``metadata`` carries what the command line needs: ``help``, and optionally ``flag`` (False:
not a flag; else the flag when it is not ``--<field name>``), ``metavar``, ``choices`` and ``append``
(a repeatable flag). See `ina.serve.cli`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

from ina.foundation.adapters import BASE_ADAPTER
from ina.foundation.errors import UsageError
from ina.foundation.models import DTYPES

API_KEY_ENV = "INA_API_KEY"
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
API_KEY = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no spaces: what a Bearer header carries
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
FILES_KEPT = 64  # open files kept free of connections: the model's files, logs, the event loop's own
DEFAULT_MAX_CONNECTIONS = 4096

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
    batch_window_ms: float = _option(
        5.0, "how long an idle server gathers requests into a batch, in [0, 1000]"
    )
    max_queue: int = _option(256, "requests allowed to wait (more get 503)")
    max_rows_per_request: int | None = _option(
        None, "completions (n × prompts) one request may ask for (default: half of --max_batch_size)"
    )
    prefill_chunk_tokens: int | None = _option(
        None,
        "prompt tokens run per forward pass between two decode steps (default 256): smaller keeps running "
        "streams smoother under a long prompt, larger gives that prompt its first token sooner",
    )
    token_budget: int | None = _option(
        None,
        "tokens (each completion: prompt + max_tokens) accepted requests may hold at once; more waits or gets "
        "503 (default: half the free memory over the KV cache's cost per token)",
    )
    max_body_bytes: int = _option(1_000_000, "largest request body (more get 413)")
    max_attention_tokens: int = _option(
        128, "longest text /v1/attention maps, in tokens (more get 400); its answer grows with the square"
    )
    dtype: str = _option("auto", "auto (float32 on CPU), float32, bfloat16, float16, float64")
    device: str = _option("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    num_threads: int | None = _option(
        None, "torch CPU threads (default: torch's choice; 1 suits tiny models)"
    )
    max_connections: int | None = _option(
        None,
        "open connections at most; at the limit the oldest one still sending its request is closed "
        f"(default: the open-file limit less {FILES_KEPT} and the listen backlog, at most {DEFAULT_MAX_CONNECTIONS})",
    )
    timeout_keep_alive: float = _option(5.0, "seconds an idle keep-alive connection stays open (uvicorn's)")
    timeout_header: float = _option(
        10.0, "seconds a connection has to send its request line and headers (else 408 and closed)"
    )
    timeout_body: float = _option(30.0, "seconds a request has to send its whole body (else 408 and closed)")
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
        for field, low, high in (
            ("batch_window_ms", 0.0, 1000.0),
            ("timeout_keep_alive", 0.001, 3600.0),
            ("timeout_header", 0.001, 3600.0),
            ("timeout_body", 0.001, 3600.0),
        ):
            value = getattr(self, field)
            if not isinstance(value, int | float) or not (math.isfinite(value) and low <= value <= high):
                problems.append(
                    f"--{field} must be a finite number of {_unit(field)} in [{low:g}, {high:g}]; got {value!r}"
                )
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            problems.append(
                f"--num_threads must be an integer >= 1 (or left out: torch's choice); got {self.num_threads!r}"
            )
        for field, default in (
            ("max_rows_per_request", "half of --max_batch_size"),
            ("prefill_chunk_tokens", "the engine's 256"),
            ("token_budget", "from free memory"),
        ):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"--{field} must be an integer >= 1 (or left out: {default}); got {value!r}")
        problems += self._text_problems()
        problems += self._connection_problems()
        if self.dtype not in DTYPES:
            problems.append(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.log_level not in LOG_LEVELS:
            problems.append(f"--log_level must be one of {', '.join(LOG_LEVELS)}; got {self.log_level!r}")
        if problems:
            raise SettingsError("invalid serve settings:\n  " + "\n  ".join(problems))
        self.default_max_tokens = min(self.default_max_tokens, self.max_tokens_cap)
        self.api_key = self.api_key or None  # "" means no key, whatever $INA_API_KEY says

    def _text_problems(self) -> list[str]:
        """The API key (from the flag or $INA_API_KEY), the base model id and the host, as text."""
        problems = []
        source = "--api_key"
        if self.api_key is None:
            self.api_key, source = os.environ.get(API_KEY_ENV) or None, API_KEY_ENV
        if self.api_key and not API_KEY.match(self.api_key):
            problems.append(
                f"{source} must be 1-512 printable ASCII characters without spaces (it is sent as "
                f"`Authorization: Bearer KEY`); got {_secret(self.api_key)}: give a key such as the output of "
                '`openssl rand -hex 16`, or "" for none'
            )
        model_id = self.base_model_id
        if model_id is not None and (
            not model_id.strip()
            or model_id != model_id.strip()
            or len(model_id) > 256
            or not model_id.isprintable()
        ):
            problems.append(
                "--base_model_id must be 1-256 printable characters without leading or trailing spaces (it is "
                f"the `model` of every request for the base); got {_quoted(model_id)}"
            )
        if not self.host.strip() or not self.host.isprintable() or " " in self.host:
            problems.append(
                f"--host must be an address or host name, e.g. 127.0.0.1 or 0.0.0.0; got {_quoted(self.host)}"
            )
        return problems

    def _connection_problems(self) -> list[str]:
        """``max_connections`` below the open-file limit (its default set from that limit)."""
        files = open_file_limit()
        most = DEFAULT_MAX_CONNECTIONS if files is None else files - FILES_KEPT - listen_backlog(files)
        value = self.max_connections
        if value is None:
            if most < 1:
                return [
                    f"the open-file limit ({files}, `ulimit -n`) leaves no room for connections: ina serve keeps "
                    f"{FILES_KEPT} files and a listen backlog of {listen_backlog(files)} free; raise it with `ulimit -n 4096`"
                ]
            self.max_connections = min(DEFAULT_MAX_CONNECTIONS, most)
            return []
        if not isinstance(value, int) or value < 1:
            return [f"--max_connections must be an integer >= 1; got {value!r}"]
        if value > most:
            return [
                f"--max_connections must be at most {most} under this process's open-file limit of {files} "
                f"(`ulimit -n`; {FILES_KEPT} files and a listen backlog of {listen_backlog(files or 0)} stay free); "
                f"got {value}: lower it or raise the limit"
            ]
        return []


def open_file_limit() -> int | None:
    """This process's soft limit on open files (None: unlimited, or not known on this system)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def listen_backlog(files: int | None) -> int:
    """The listen backlog: connections the kernel queues, and the most the event loop accepts at once
    (each an open file before the server can close it), so it stays a small part of the file limit."""
    return 2048 if files is None else min(2048, max(16, files // 8))


def _unit(field: str) -> str:
    return "milliseconds" if field.endswith("_ms") else "seconds"


def _quoted(text: str) -> str:
    """A setting's text for a message: quoted and escaped, cut at 80 characters."""
    return repr(text) if len(text) <= 80 else repr(text[:80]) + "..."


def _secret(key: str) -> str:
    """What is wrong with an API key, without showing the key."""
    bad = next((i for i, c in enumerate(key) if not API_KEY.match(c)), None)
    where = "" if bad is None else f", {key[bad]!r} at position {bad}"
    return f"a key of {len(key)} characters{where}"
