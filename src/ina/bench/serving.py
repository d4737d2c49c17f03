"""Load on `ina serve`: requests/s and time to first token for 1, 8 and 32 concurrent streaming clients.

    ina bench serve --tiny                        # a tiny random LLaMA + 2 InA adapters
    ina bench serve --base_model PATH --adapter a=DIR --adapter b=DIR
    ina bench serve --url http://127.0.0.1:8000  # a server that is already running

Without ``--url`` the benchmark starts
``ina serve`` as a child process on a free loopback port and stops it at the end. Each client sends
``--requests_per_client`` streaming chat requests one after another, cycling through the served
models (so batches mix adapters). Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ina.bench.settings import ServeBenchSettings
from ina.foundation.adapters import parse_adapter_specs
from ina.foundation.errors import UsageError
from ina.testing import tiny_files

PROMPTS = [
    "Tell me a joke about a cat.",
    "What is the colour of my bag?",
    "Write one sentence about the sea.",
    "List three fruits.",
]
API_KEY_ENV = "INA_API_KEY"  # `ina serve` falls back to it when --api_key is not given
STARTUP_TIMEOUT_S = 600.0  # importing torch and loading a large model on a busy machine takes minutes


class ServerStartError(RuntimeError):
    """The `ina serve` child process did not answer /health; the message carries the end of its output."""


async def _one(
    client: Any, url: str, model: str, prompt: str, max_tokens: int, headers: dict[str, str]
) -> dict[str, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{reply.status_code}: {(await reply.aread()).decode()[:300]}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens}


async def run_level(
    url: str, models: list[str], clients: int, per_client: int, max_tokens: int, api_key: str | None
) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending ``per_client`` requests in a row."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    results: list[dict[str, float]] = []

    async def client_loop(index: int, client: Any) -> None:
        for k in range(per_client):
            n = index * per_client + k
            results.append(
                await _one(
                    client, url, models[n % len(models)], PROMPTS[n % len(PROMPTS)], max_tokens, headers
                )
            )

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - start
    ttfts = sorted(r["ttft"] for r in results)
    latencies = sorted(r["latency"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "seconds": wall,
        "requests_per_s": len(results) / wall,
        "tokens": sum(r["tokens"] for r in results),
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p95_ms": 1000 * _percentile(ttfts, 0.95),
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * _percentile(latencies, 0.95),
        "latency_p99_ms": 1000 * _percentile(latencies, 0.99),
    }


def _percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted values."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, characters: int = 4000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""


def wait_for_health(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Return once ``GET {url}/health`` answers 200; `ServerStartError` if ``process`` exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ServerStartError(
                f"`ina serve` exited with code {process.returncode} before answering {url}/health:\n"
                + _tail(log_path)
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"`ina serve` did not answer {url}/health within {timeout:.0f} s:\n{_tail(log_path)}"
            )
        time.sleep(0.25)


@contextlib.contextmanager
def serve_process(
    base_model: str,
    adapters: dict[str, str],
    settings: ServeBenchSettings,
    log_path: Path,
    log: Callable[[str], None] = lambda line: None,
    timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``ina serve`` on ``base_model`` and ``adapters`` in a child process; yields its URL and the process,
    then stops it."""
    port = settings.port or _free_port()  # --port, else any free loopback port
    command = [sys.executable, "-m", "ina", "serve", "--base_model", base_model, "--port", str(port)]
    for name, path in adapters.items():
        command += ["--adapter", f"{name}={path}"]
    command += ["--max_queue", "1024", "--log_level", "warning"]  # every client's requests may queue at once
    environment = dict(os.environ)
    if settings.api_key:
        command += ["--api_key", settings.api_key]
    else:
        environment.pop(API_KEY_ENV, None)  # no key given: the server must not require one
    if settings.num_threads:
        command += ["--num_threads", str(settings.num_threads)]
    if settings.peft_path:
        environment["INA_GATHERED"] = "0"  # ina.core.gathered.is_enabled
    url = f"http://127.0.0.1:{port}"
    log(f"ina bench serve: starting `ina serve` on {base_model} with adapters {sorted(adapters)} at {url}")
    with open(log_path, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_for_health(url, process, log_path, timeout)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def served_models(url: str, headers: dict[str, str]) -> list[str]:
    """The model ids ``GET {url}/v1/models`` lists; `UsageError` naming --url or --api_key when that fails."""
    import httpx

    try:
        reply = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
    except httpx.TransportError as error:
        raise UsageError(
            f"--url {url!r}: no server answers there ({type(error).__name__}: {error}); start `ina serve` first, "
            "or drop --url to let the benchmark start one"
        ) from None
    if reply.status_code == 401:
        raise UsageError(
            f"--api_key: {url} refused the key (HTTP 401); give the key `ina serve` was started with"
        )
    try:
        return [model["id"] for model in reply.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            f"--url {url!r}: GET /v1/models answered HTTP {reply.status_code} without a model list; "
            "is it an `ina serve` (or OpenAI-compatible) server?"
        ) from None


def run_serve_bench(
    settings: ServeBenchSettings, log: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Measure every ``settings.concurrency`` level (and with ``--adapters``, every number of adapters in use)."""
    from ina.bench.serving_adapters import make_adapters, run_adapter_levels

    with contextlib.ExitStack() as stack:
        url, process = settings.url, None
        if url is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ina-bench-serve-")))
            given = {name: str(path) for name, path in parse_adapter_specs(settings.adapters).items()}
            if settings.tiny:
                base, adapters = tiny_files(scratch)
                given = {} if settings.adapter_counts else adapters
            else:
                base, adapters = str(settings.base_model), given
            if settings.adapter_counts:
                adapters = make_adapters(max(settings.adapter_counts), base, given, scratch / "adapters", log)
            url, process = stack.enter_context(
                serve_process(base, adapters, settings, scratch / "serve.log", log)
            )
        url = url.rstrip("/")
        headers = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        models = served_models(url, headers)
        if settings.adapter_counts:
            return run_adapter_levels(url, models, settings, process, log)
        asyncio.run(run_level(url, models, 1, 1, 4, settings.api_key))  # warm-up
        rows = [
            asyncio.run(
                run_level(url, models, c, settings.requests_per_client, settings.max_tokens, settings.api_key)
            )
            for c in settings.concurrency
        ]
    return {
        "models": models,
        "max_tokens": settings.max_tokens,
        "requests_per_client": settings.requests_per_client,
        "rows": rows,
    }
