"""`ina serve`: one base model and its adapters behind an OpenAI-compatible API and a web UI.

The flags are generated from `ina.serve.settings.ServeSettings` (its fields, defaults and help), so
each option is declared once. Nothing heavier than the standard library is imported until the
command runs.
"""

from __future__ import annotations

import argparse
import errno
import gc
import socket
import sys
from pathlib import Path

from ina.foundation.arguments import add_arguments, flag_fields
from ina.serve.settings import ServeSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `ina serve` to the `ina` parser."""
    serve = subparsers.add_parser(
        "serve",
        description=(
            "Serve one base model and any number of adapters (InA, the authors' format or LoRA) from one "
            "process. Each adapter is a model id; concurrent requests for different adapters share batches. "
            "Without --base_model, serves the embedded default model (SmolLM2-135M-Instruct) and the adapter "
            "`ina finetune` wrote to its default output folder, if there is one."
        ),
    )
    add_arguments(serve, ServeSettings, given_only=False)
    serve.set_defaults(handler=_serve)


def default_adapters(cwd: Path | None = None) -> tuple[dict[str, str], str]:
    """The adapter a plain `ina finetune` wrote, and a line saying what is served and why.

    `ina finetune` writes to ``outputs/ina-finetune-smollm2`` relative to the folder it runs in, so
    ``ina serve`` looks there, relative to the folder it runs in (``cwd``), as for any relative path.
    """
    from ina.embedded import DEMO_ADAPTER_DIR

    cwd = Path.cwd() if cwd is None else cwd
    path = cwd / DEMO_ADAPTER_DIR
    if (path / "adapter_config.json").is_file():
        return {
            path.name: str(path)
        }, f"serving the adapter `ina finetune` wrote as model id {path.name!r}: {path}"
    return {}, (
        f"serving the base model alone: no --adapter was given and {cwd} holds no {DEMO_ADAPTER_DIR}, "
        "where a plain `ina finetune` run in this folder writes its adapter; start ina serve in the folder "
        f"`ina finetune` ran in, or pass --adapter {path.name}=PATH/{DEMO_ADAPTER_DIR}"
    )


def _serve(args: argparse.Namespace) -> int:
    from ina.foundation.adapters import AdapterSpecError, parse_adapter_specs

    try:
        pairs = parse_adapter_specs(args.adapters, "--adapter", bare_path=False, check=False)
        adapters = {name: str(path) for name, path in pairs.items()}
    except AdapterSpecError as error:
        # A malformed flag ends the command before anything is loaded: one line, exit code 2 (`ina.cli.main`).
        raise error from None
    if args.num_threads is not None:
        import torch

        torch.set_num_threads(max(1, args.num_threads))
    values = {field.name: getattr(args, field.name) for field in flag_fields(ServeSettings)}
    unserved = {}  # model id -> why it is not served (a 404 for it says so)
    if values["base_model"] is None:
        from ina.embedded import DEMO_ADAPTER_DIR
        from ina.embedded.smollm import MODEL_NAME, ensure_model

        values["base_model"] = str(ensure_model())
        values["base_model_id"] = values["base_model_id"] or MODEL_NAME
        if not adapters:
            adapters, note = default_adapters()
            print(f"ina serve: {note}", file=sys.stderr)
            if not adapters:
                unserved[Path(DEMO_ADAPTER_DIR).name] = note
    settings = ServeSettings(
        **{**values, "adapters": adapters, "unserved": unserved}
    )  # SettingsError: exit 2
    return _run(settings)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port``, before any model loads: an address this machine cannot listen on
    is one line naming the flag (`UsageError`), not an errno from deep inside the server a minute later."""
    from ina.foundation.errors import UsageError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError):
        raise UsageError(
            f"--host {host!r} is neither an IP address nor a name this machine can resolve; give e.g. 127.0.0.1 "
            "(this machine only) or 0.0.0.0 (every interface)"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        where = f"--host {host} --port {port}"
        why = {
            errno.EADDRINUSE: f"--port {port} is already in use on {host} (another server?); stop it or choose "
            "another --port (0: any free port)",
            errno.EACCES: f"{where}: not allowed to listen there (ports below 1024 need privileges); choose "
            "a --port of 1024 or more",
            errno.EADDRNOTAVAIL: f"--host {host} is not an address of this machine; give one of its addresses, "
            "127.0.0.1 or 0.0.0.0",
        }.get(error.errno or 0, f"{where}: cannot listen there ({error.strerror or error})")
        raise UsageError(why) from None
    return sock


def _run(settings: ServeSettings) -> int:
    import uvicorn

    from ina.serve.api import create_app
    from ina.serve.engine import Engine
    from ina.serve.server import uvicorn_config

    sock = listen(settings.host, settings.port)  # UsageError: exit 2, before the model loads
    port = sock.getsockname()[1]
    try:
        engine = Engine.load(
            str(settings.base_model),
            settings.adapters,
            base_model_id=settings.base_model_id,
            dtype=settings.dtype,
            device=settings.device,
            max_batch_size=settings.max_batch_size,
            batch_window_ms=settings.batch_window_ms,
            max_queue=settings.max_queue,
            max_rows_per_request=settings.max_rows_per_request,
            token_budget=settings.token_budget,
            prefill_chunk_tokens=settings.prefill_chunk_tokens,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        from ina.core.loading import AdapterFileError
        from ina.foundation.errors import UsageError

        sock.close()
        if isinstance(error, (UsageError, AdapterFileError)):
            raise  # bad input (a missing base, a damaged adapter): one line, exit code 2 (`ina.cli.main`)
        print(
            f"ina serve: could not load --base_model {settings.base_model} with adapters {settings.adapters}: "
            f"{type(error).__name__}: {error}\nCheck that each adapter was trained on this base model.",
            file=sys.stderr,
        )
        return 1
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(
            f"ina serve: warning: listening on {settings.host} without an API key; anyone who can reach this "
            "machine can use the models (set --api_key or INA_API_KEY)",
            file=sys.stderr,
        )
    # The model's objects live as long as the process: keep them out of every full garbage collection,
    # which otherwise walks them all while a request holding many objects is parsed (0.65 s -> 0.1 s).
    gc.freeze()
    app = create_app(engine, settings)
    print(
        f"ina serve: models {engine.model_ids} on http://{settings.host}:{port}/ "
        f"(API key {'required' if settings.api_key else 'off'}; at most {settings.max_connections} connections)",
        file=sys.stderr,
    )
    server = uvicorn.Server(uvicorn_config(app, settings.host, port, settings.log_level))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        engine.shutdown()
        sock.close()
    return 0 if server.started else 1
