"""`ina serve`: one base model and its adapters behind an OpenAI-compatible API and a web UI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `ina serve` to the `ina` parser."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a base model and InA adapters: OpenAI-compatible API (/v1/...) and a web UI (/)",
        description=(
            "Serve one base model and any number of adapters (InA, the authors' format or LoRA) from one "
            "process. Each adapter is a model id; concurrent requests for different adapters share batches. "
            "Without --base_model, serves the embedded default model (SmolLM2-135M-Instruct) and the adapter "
            "`ina finetune` wrote to its default output folder, if there is one."
        ),
    )
    serve.add_argument(
        "--base_model", default=None, help="base model folder or name (default: the embedded model)"
    )
    serve.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the adapter in folder PATH as model id NAME (repeat for more adapters)",
    )
    serve.add_argument(
        "--base_model_id", default=None, help="model id of the base (default: its folder name)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api_key",
        default=None,
        help="require `Authorization: Bearer KEY` on every route but /health (default: $INA_API_KEY, else none)",
    )
    serve.add_argument(
        "--max_tokens_cap", type=int, default=1024, help="largest max_tokens a request may ask for"
    )
    serve.add_argument("--max_batch_size", type=int, default=32, help="rows decoded together")
    serve.add_argument(
        "--batch_window_ms", type=float, default=5.0, help="how long to gather requests into a batch"
    )
    serve.add_argument("--max_queue", type=int, default=256, help="requests allowed to wait (more get 503)")
    serve.add_argument(
        "--max_body_bytes", type=int, default=1_000_000, help="largest request body (more get 413)"
    )
    serve.add_argument(
        "--dtype", default="auto", help="auto (float32 on CPU), float32, bfloat16, float16, float64"
    )
    serve.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    serve.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 suits tiny models)",
    )
    serve.add_argument(
        "--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(handler=_serve)


def parse_adapters(values: list[str]) -> dict[str, str]:
    """``["a=path1", "b=path2"]`` -> ``{"a": "path1", "b": "path2"}``; errors name the flag and the fix."""
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(
                f"ina serve: --adapter must be NAME=PATH (e.g. --adapter ina03=outputs/ina); got {value!r}"
            )
        if name in adapters:
            raise SystemExit(
                f"ina serve: --adapter name {name!r} is given twice; give each adapter its own NAME"
            )
        adapters[name] = path
    return adapters


def default_adapters() -> dict[str, str]:
    """The adapter a plain `ina finetune` writes (its quick default output folder), when it exists."""
    from ina.finetune.arguments import QUICK_DEFAULTS

    path = Path(QUICK_DEFAULTS["output_dir"])
    if (path / "adapter_config.json").is_file():
        return {path.name: str(path)}
    return {}


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ina.serve.app import create_app
    from ina.serve.engine import Engine
    from ina.serve.settings import ServeSettings, SettingsError

    if args.num_threads is not None:
        import torch

        torch.set_num_threads(max(1, args.num_threads))
    adapters = parse_adapters(args.adapter)
    base_model, base_model_id = args.base_model, args.base_model_id
    if base_model is None:
        from ina.embedded.smollm import MODEL_NAME, ensure_model

        base_model = str(ensure_model())
        base_model_id = base_model_id or MODEL_NAME
        if not adapters:
            adapters = default_adapters()
    try:
        settings = ServeSettings(
            base_model=base_model,
            adapters=adapters,
            base_model_id=base_model_id,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            max_tokens_cap=args.max_tokens_cap,
            max_batch_size=args.max_batch_size,
            batch_window_ms=args.batch_window_ms,
            max_queue=args.max_queue,
            max_body_bytes=args.max_body_bytes,
            dtype=args.dtype,
            device=args.device,
        )
    except SettingsError as error:
        print(f"ina serve: {error}", file=sys.stderr)
        return 2
    try:
        engine = Engine.load(
            base_model,
            adapters,
            base_model_id=settings.base_model_id,
            dtype=settings.dtype,
            device=settings.device,
            max_batch_size=settings.max_batch_size,
            batch_window_ms=settings.batch_window_ms,
            max_queue=settings.max_queue,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        print(
            f"ina serve: could not load --base_model {base_model} with adapters {adapters}: "
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
    app = create_app(engine, settings)
    print(
        f"ina serve: models {engine.model_ids} on http://{settings.host}:{settings.port}/ "
        f"(API key {'required' if settings.api_key else 'off'})",
        file=sys.stderr,
    )
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    finally:
        engine.shutdown()
    return 0
