"""Benchmark `ina serve`: requests/s and time to first token for 1, 8 and 32 concurrent streaming clients.

    python -m ina.serve.bench --tiny                        # a tiny random LLaMA + 2 InA adapters, in-process
    python -m ina.serve.bench --base_model PATH --adapter a=DIR --adapter b=DIR
    python -m ina.serve.bench --url http://127.0.0.1:8000  # a server that is already running

Each client sends ``--requests_per_client`` streaming chat requests one after another, cycling through
the served models (so batches mix adapters). Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Tell me a joke about a cat.",
    "What is the colour of my bag?",
    "Write one sentence about the sea.",
    "List three fruits.",
]


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
    return {
        "clients": clients,
        "requests": len(results),
        "seconds": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p95_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        "latency_p50_ms": 1000 * statistics.median(r["latency"] for r in results),
    }


def save_demo_adapter(
    base: str | Path, out: str | Path, inhibition: float, seed: int, targets: list[str]
) -> None:
    """Save an InA adapter for ``base`` whose B matrices are random (non-zero), so it visibly changes answers."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import ina

    config = ina.InAConfig(
        r=4, lora_alpha=8, target_modules=targets, inhibition=inhibition, task_type="CAUSAL_LM"
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(out)


def tiny_files(root: Path) -> tuple[str, dict[str, str]]:
    """A tiny random LLaMA and two demo InA adapters (ρ = 0.3 and 0.9) saved under ``root``."""
    from ina.testing import tiny_model, tiny_tokenizer

    base = root / "tiny-llama"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    adapters = {}
    for seed, inhibition in enumerate((0.3, 0.9), start=1):
        name = f"ina{round(inhibition * 10):02d}"
        save_demo_adapter(base, root / name, inhibition, seed, ["q_proj", "v_proj"])
        adapters[name] = str(root / name)
    return str(base), adapters


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m ina.serve.bench", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="benchmark a running server")
    source.add_argument("--base_model", help="start a server in-process on this base model")
    source.add_argument(
        "--tiny", action="store_true", help="start a server on a tiny random model + 2 adapters"
    )
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--api_key", default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests_per_client", type=int, default=4)
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument(
        "--num_threads", type=int, default=None, help="torch CPU threads for an in-process server"
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import httpx

    server = engine = None
    scratch = tempfile.TemporaryDirectory() if args.tiny else None
    try:
        url = args.url
        if url is None:
            import torch

            from ina.serve.app import create_app
            from ina.serve.cli import parse_adapters
            from ina.serve.engine import Engine
            from ina.serve.server import LiveServer
            from ina.serve.settings import ServeSettings

            if args.num_threads:
                torch.set_num_threads(args.num_threads)
            if scratch is not None:
                base, adapters = tiny_files(Path(scratch.name))
            else:
                base, adapters = args.base_model, parse_adapters(args.adapter)
            settings = ServeSettings(
                base_model=base, adapters=adapters, api_key=args.api_key or "", max_queue=1024
            )
            engine = Engine.load(base, adapters, max_batch_size=settings.max_batch_size)
            server = LiveServer(create_app(engine, settings)).start()
            url = server.url
        url = url.rstrip("/")
        headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        models = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=headers).json()["data"]]
        asyncio.run(run_level(url, models, 1, 1, 4, args.api_key))  # warm-up
        rows = [
            asyncio.run(run_level(url, models, c, args.requests_per_client, args.max_tokens, args.api_key))
            for c in args.concurrency
        ]
    finally:
        if server is not None:
            server.stop()
        if engine is not None:
            engine.shutdown()
        if scratch is not None:
            scratch.cleanup()
    print(f"models {models}, max_tokens {args.max_tokens}, {args.requests_per_client} requests per client")
    print(
        f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} {'latency p50':>11}"
    )
    for r in rows:
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:>7.2f} {r['tokens_per_s']:>7.1f} "
            f"{r['ttft_p50_ms']:>7.0f}ms {r['ttft_p95_ms']:>7.0f}ms {r['latency_p50_ms']:>9.0f}ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
