"""A tiny LLaMA with two non-zero InA adapters on disk, an engine on it and a live server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ina.serve.server import LiveServer
from ina.testing import save_demo_adapter

ADAPTERS = {"ina03": 0.3, "ina09": 0.9}


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
        save_demo_adapter(base, root / name, inhibition, seed, targets[name])
        adapters[name] = str(root / name)
    # ina09 says it was trained on Alpaca prompts, as `ina finetune --prompt_template_name alpaca` records
    from ina.foundation.prompts import PROMPT_FILE, PromptTemplate

    (root / "ina09" / PROMPT_FILE).write_text(
        json.dumps({"template": PromptTemplate.load("alpaca").to_json()})
    )
    return ServeFiles(base, adapters)


@pytest.fixture(scope="module")
def engine(serve_files: ServeFiles) -> Iterator[object]:
    from ina.serve.engine import Engine

    # One intra-op thread: a 2-layer model gains nothing from more, and loses a lot on a busy 2-core box
    # (module scope, so the process-wide setting is restored before other rooms' tests run).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # float64: greedy ties between near-equal logits cannot flip between a batch and a lone request
    engine = Engine.load(serve_files.base, serve_files.adapters, base_model_id="tiny-llama", dtype="float64")
    engine.start()
    yield engine
    engine.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def settings(serve_files: ServeFiles) -> object:
    from ina.serve.settings import ServeSettings

    return ServeSettings(
        base_model=str(serve_files.base),
        adapters=serve_files.adapters,
        api_key="",  # no key, whatever INA_API_KEY says
        max_tokens_cap=64,
        max_body_bytes=20_000,
    )


@pytest.fixture(scope="module")
def server(engine: object, settings: object) -> Iterator[LiveServer]:
    from ina.serve.api import create_app

    with LiveServer(create_app(engine, settings)) as live:  # type: ignore[arg-type]
        yield live


@pytest.fixture()
def client(server: LiveServer) -> object:
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
