"""Base models and tokenizers: one device rule, one ``dtype="auto"`` rule, one tokenizer loader, CPU threads.

``dtype="auto"`` means float32 on a CPU and bfloat16 on a GPU that supports it (float32 otherwise),
for every command. ``minilm`` and ``smollm`` name the embedded offline defaults (`ina.embedded`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ina.foundation.errors import UsageError

DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16", "float64")

# Short names for the embedded offline defaults and the models they stand for.
ALIASES: dict[str, str] = {"minilm": "all-MiniLM-L6-v2", "smollm": "SmolLM2-135M-Instruct"}


def resolve_device(setting: str = "auto", flag: str = "--device") -> Any:
    """``"auto"`` → ``cuda`` when a GPU is present, else ``cpu``; anything else as ``torch.device``.

    A device this machine does not have (``cuda`` without a GPU, ``cuda:3`` with two) is a `UsageError`
    naming ``flag``, raised before any model is loaded.
    """
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rule = f"{flag} must be auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError, TypeError) as error:
        raise UsageError(f"{rule}; got {setting!r}") from error
    if device.type == "cpu":
        return device
    if device.type not in _ACCELERATORS:
        raise UsageError(f"{rule}; got {setting!r}")
    backend = getattr(torch, device.type, None)
    count = backend.device_count() if backend is not None and backend.is_available() else 0
    if count == 0:
        build = (
            " (this torch is a CPU-only build)" if device.type == "cuda" and not torch.version.cuda else ""
        )
        raise UsageError(
            f"{flag} {setting!r}: this machine has no {_ACCELERATORS[device.type]}{build}; use {flag} cpu, or auto "
            "(a GPU when there is one, else the CPU)"
        )
    if device.index is not None and device.index >= count:
        raise UsageError(
            f"{flag} {setting!r}: this machine has {count} {device.type} device(s), "
            f"{device.type}:0 to {device.type}:{count - 1}; give one of them, or auto"
        )
    return device


# Device types beside the CPU, each a ``torch.<type>`` module with is_available/device_count, and its name.
_ACCELERATORS: dict[str, str] = {"cuda": "CUDA GPU", "mps": "Apple GPU (mps)", "xpu": "Intel GPU (xpu)"}


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (``None``: unchanged), restoring the previous count."""
    import torch

    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def recompile_limit(at_least: int | None) -> Iterator[None]:
    """Run the block with torch.compile's recompilation limit (dynamo's ``cache_size_limit``) at least
    ``at_least`` (``None``: unchanged), restoring the previous value: the process's other compiled code
    keeps the limit it had."""
    if at_least is None:
        yield
        return
    import torch._dynamo as dynamo

    previous = dynamo.config.cache_size_limit
    dynamo.config.cache_size_limit = max(previous, at_least)
    try:
        yield
    finally:
        dynamo.config.cache_size_limit = previous


def resolve_dtype(setting: str = "auto", device: Any = None, flag: str = "--dtype") -> Any:
    """The ``torch.dtype`` of ``setting``; ``"auto"`` is float32 on CPU, bfloat16 on a GPU that has it."""
    import torch

    if setting == "auto":
        device = resolve_device() if device is None else torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if setting not in DTYPES:
        raise UsageError(f"{flag} must be one of {', '.join(DTYPES)}; got {setting!r}")
    return getattr(torch, setting)


def resolve_base_model(name: str) -> str:
    """``minilm`` / ``smollm`` (or empty: ``smollm``) → the embedded model's folder; anything else unchanged."""
    if name == "minilm":
        from ina.embedded.minilm import model_path

        return str(model_path())
    if not name or name == "smollm":
        from ina.embedded.smollm import ensure_model

        return str(ensure_model())
    return name


def display_name(base_model: str) -> str:
    """The name to print for a base model: the model an alias stands for, else the argument itself."""
    return ALIASES.get(base_model, base_model)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in _OFFLINE_VARIABLES)


_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_FOLDER = "a model folder (config.json, weights, tokenizer files)"


def check_model_source(name: str, flag: str = "--base_model") -> None:
    """Refuse, before any loading, a ``name`` that is a file or a path (``/``, ``.``, ``~``) to nothing.

    A bare ``name`` or ``owner/name`` may be a hub id, checked when it is loaded (`source_error`).
    """
    path = Path(name).expanduser()
    if path.is_file():
        raise UsageError(f"{flag} {name!r} is a file; give {_FOLDER}")
    local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if local and not path.exists():
        raise UsageError(f"{flag} {name!r}: no such folder; give {_FOLDER}, or `minilm` / `smollm`")


def source_error(
    name: str, flag: str, error: BaseException, what: str = "it", unreachable: bool = False
) -> UsageError:
    """The `UsageError` for a model ``name`` whose loading raised ``error``, naming the real cause.

    ``unreachable``: the hub did not answer (`hub_reachable`), so only a cached copy could have loaded.
    """
    if not Path(name).expanduser().exists() and (unreachable or _offline() or "connect" in str(error)):
        return UsageError(
            f"{flag} {name!r}: not a local folder, and the Hugging Face hub is unreachable "
            f"(HF_HUB_OFFLINE=1, or no network) with no cached copy of {what}; download it "
            f"once online (`hf download {name}`), or give {_FOLDER}, or `minilm` / `smollm` (embedded, offline)"
        )
    return UsageError(
        f"{flag} {name!r}: cannot load {what} ({_first_line(error)}); give {_FOLDER} or, online, a hub id"
    )


#: Seconds the hub (or the proxy to it) has to accept a connection before ina loads from the cache only.
HUB_TIMEOUT = 3.0


def _hub_address() -> tuple[str, int]:
    """The host and port a hub download connects to first: the proxy for the hub's URL if one is set."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    proxies = getproxies()
    proxy = proxies.get(endpoint.scheme) or proxies.get("all")
    if proxy and not proxy_bypass(endpoint.hostname or ""):
        endpoint = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)


@functools.cache
def hub_reachable(timeout: float = HUB_TIMEOUT) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, or the proxy to it) accepts a TCP connection in ``timeout`` s.

    Asked once per process, before the first hub download: without an answer, huggingface_hub would
    retry each file for about a minute before the same error.
    """
    import socket
    import threading

    answered = threading.Event()

    def connect() -> None:  # in a thread: name resolution has no timeout of its own
        with contextlib.suppress(OSError), socket.create_connection(_hub_address(), timeout=timeout):
            answered.set()

    probe = threading.Thread(target=connect, name="ina-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)  # a refused connection or an unknown name ends it at once
    return answered.is_set()


def _hub_kwargs(name: str, kwargs: dict[str, Any], model: bool = True) -> tuple[dict[str, Any], bool]:
    """``kwargs`` for ``from_pretrained(name)`` (of a model, else a tokenizer), and whether the hub was unreachable.

    A hub id while the hub does not answer is read from the local cache only (``local_files_only``):
    a cached copy loads at once, a missing one fails at once.
    """
    if Path(name).expanduser().exists() or _offline() or kwargs.get("local_files_only") or hub_reachable():
        return kwargs, False
    kwargs = {**kwargs, "local_files_only": True}
    if model:  # transformers' Auto classes look for a PEFT adapter in the repository without that flag
        kwargs["adapter_kwargs"] = {**kwargs.get("adapter_kwargs", {}), "local_files_only": True}
    return kwargs, True


def load_tokenizer(
    name: str,
    flag: str = "--base_model",
    tokenizer_name: str | None = None,
    fast: bool = False,
    pad: bool = True,
    **kwargs: Any,
) -> Any:
    """The tokenizer of model ``name`` (or ``tokenizer_name``), with a padding token (EOS when it has none).

    ``fast`` requires a Rust tokenizer (offset mappings). Errors name ``flag`` and the fix.
    """
    from transformers import AutoTokenizer

    source = tokenizer_name or name
    source_flag = "--tokenizer_name" if tokenizer_name else flag
    check_model_source(source, source_flag)
    kwargs, unreachable = _hub_kwargs(source, kwargs, model=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as error:
        raise source_error(source, source_flag, error, "its tokenizer", unreachable) from error
    except (ValueError, TypeError) as error:
        raise UsageError(
            f"{flag} {name!r} has no usable tokenizer ({_first_line(error)}); give a model "
            "folder with its tokenizer files (or, online, a hub name), or pass --tokenizer_name"
        ) from error
    # transformers 5 builds an empty tokenizer from config.json alone; a real one has more than its specials.
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        raise UsageError(
            f"{flag} {name!r} has no tokenizer files (its tokenizer would have an empty vocabulary); save the "
            "tokenizer next to the model or pass --tokenizer_name"
        )
    if fast and not getattr(tokenizer, "is_fast", False):
        raise UsageError(
            f"the tokenizer of {source!r} is not a fast (Rust) tokenizer; ina needs one (for offset mappings); "
            "save a tokenizer.json with the model or pass --tokenizer_name"
        )
    if pad and tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None and tokenizer.unk_token is None:
            raise UsageError(
                f"{flag} {name!r}: the tokenizer has neither a padding nor an end-of-sequence token; add a pad token"
            )
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def load_pretrained(auto_class: Any, name: str, flag: str = "--base_model", **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(name, **kwargs)`` without transformers' load report, errors naming ``flag``.

    The load report lists a freshly initialised task head as "MISSING" (an adapter's saved head
    replaces it) and prints terminal escape codes; it is not shown, nor is the progress bar when
    stderr is not a terminal.
    """
    import sys

    from transformers.utils import logging as transformers_logging

    check_model_source(name, flag)
    kwargs, unreachable = _hub_kwargs(name, kwargs)
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    if not sys.stderr.isatty():
        transformers_logging.disable_progress_bar()
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except OSError as error:
        raise source_error(name, flag, error, unreachable=unreachable) from error
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()


def load_with_adapters(
    name: str,
    adapters: Mapping[str, str | os.PathLike[str]],
    auto_class: Any = None,
    dtype: str = "auto",
    device: str = "auto",
    pad: bool = True,
    flag: str = "--base_model",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Base model ``name`` (``auto_class``, default a causal LM) with each adapter of ``adapters`` loaded
    unmerged under its name, on its device in eval mode; and its tokenizer (see `load_tokenizer`).

    Adapters may be InA, the authors' format or plain LoRA (`ina.core.loading.load_adapter`). An adapter
    that does not fit the model raises a `UsageError` naming it and ``flag``.
    """
    from ina.core.loading import AdapterFileError, check_adapter_folder, load_adapter

    for adapter, path in adapters.items():  # cheap checks of every folder before any model is loaded
        try:
            check_adapter_folder(path)
        except AdapterFileError as error:
            raise AdapterFileError(f"--adapter {adapter}={path}: {error}") from error
    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class
    target = resolve_device(device)
    model = load_pretrained(auto_class, name, flag, dtype=resolve_dtype(dtype, target), **kwargs)
    tokenizer = load_tokenizer(name, flag, pad=pad)
    for adapter, path in adapters.items():
        try:
            model = load_adapter(model, path, adapter_name=adapter)
        except AdapterFileError as error:
            raise AdapterFileError(f"--adapter {adapter}={path}: {error}") from error
        except (ValueError, KeyError, RuntimeError) as error:
            raise UsageError(
                f"--adapter {adapter}={path}: cannot load it onto {flag} {name!r}; was it trained on another "
                f"base model? ({error})"
            ) from error
    return model.to(target).eval(), tokenizer
