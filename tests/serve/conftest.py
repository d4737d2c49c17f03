"""A tiny LLaMA with two non-zero InA adapters on disk, an engine on it and a live server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ADAPTERS = {"ina03": 0.3, "ina09": 0.9}


def make_adapter(base_dir: Path, out: Path, inhibition: float, seed: int, targets: list[str]) -> None:
    """Save an InA adapter whose B matrices are non-zero, so it visibly changes the model."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import ina

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = ina.InAConfig(
        r=4, lora_alpha=8, target_modules=targets, inhibition=inhibition, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(out)


@dataclass
class ServeFiles:
    base: Path
    adapters: dict[str, str]


@pytest.fixture(scope="session")
def serve_files(tmp_path_factory: pytest.TempPathFactory) -> ServeFiles:
    from ina.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("serve")
    base = root / "tiny-llama"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    adapters = {}
    targets = {"ina03": ["q_proj", "v_proj"], "ina09": ["q_proj", "v_proj", "up_proj"]}
    for seed, (name, inhibition) in enumerate(ADAPTERS.items(), start=1):
        make_adapter(base, root / name, inhibition, seed, targets[name])
        adapters[name] = str(root / name)
    # ina09 says it was trained on Alpaca prompts, as `ina finetune --prompt_template_name alpaca` records
    from ina.finetune.templates import PROMPT_FILE, PromptTemplate

    (root / "ina09" / PROMPT_FILE).write_text(
        json.dumps({"template": PromptTemplate.load("alpaca").to_json()})
    )
    return ServeFiles(base, adapters)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn serving ``app`` on a free loopback port in a background thread."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def engine(serve_files: ServeFiles) -> Iterator[object]:
    from ina.serve.engine import Engine

    # One intra-op thread: a 2-layer model gains nothing from more, and loses a lot on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # float64: greedy ties between near-equal logits cannot flip between a batch and a lone request
    engine = Engine.load(serve_files.base, serve_files.adapters, base_model_id="tiny-llama", dtype="float64")
    engine.start()
    yield engine
    engine.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def settings(serve_files: ServeFiles) -> object:
    from ina.serve.settings import ServeSettings

    return ServeSettings(
        base_model=str(serve_files.base),
        adapters=serve_files.adapters,
        api_key="",  # no key, whatever INA_API_KEY says
        max_tokens_cap=64,
        max_body_bytes=20_000,
    )


@pytest.fixture(scope="session")
def server(engine: object, settings: object) -> Iterator[LiveServer]:
    from ina.serve.app import create_app

    with LiveServer(create_app(engine, settings)) as live:  # type: ignore[arg-type]
        yield live


@pytest.fixture()
def client(server: LiveServer) -> object:
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
