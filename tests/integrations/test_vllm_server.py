"""vLLM's real OpenAI server with the plugin: InA from ``--lora-modules`` and from ``/v1/load_lora_adapter``
serves PEFT's greedy tokens; a bad InA config is a 400 and the server keeps serving. Without the plugin
(``VLLM_PLUGINS=""``) vLLM's own loader refuses the InA folder. Run with ``scripts/test --vllm``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integrations.conftest import (
    PROMPTS,
    PeftReference,
    base_path,
    build_adapters,
    run_vllm,
    vllm_env,
    vllm_python,
)

pytestmark = pytest.mark.vllm

STEPS = 12
START_TIMEOUT_S = 900  # an engine start takes 1.5-4 minutes on 2 shared cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_adapters(tmp_path_factory.mktemp("server") / "adapters")


@pytest.fixture(scope="module")
def server(adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    python = vllm_python()
    port = _free_port()
    log = (tmp_path_factory.mktemp("server-log") / "server.log").open("w")
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", base_path(), "--served-model-name",
        "base", "--dtype", "float32", "--enable-lora", "--max-lora-rank", "8", "--max-loras", "3",
        "--enforce-eager", "--max-model-len", "256", "--host", "127.0.0.1", "--port", str(port),
        "--lora-modules", f"ina03={adapters['ina03']}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=vllm_env(VLLM_ALLOW_RUNTIME_LORA_UPDATING="True"), stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"vLLM's server exited {process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(3)
        else:
            pytest.fail(f"vLLM's server did not start in {START_TIMEOUT_S} s; see {log.name}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def peft(adapters: dict[str, Path]) -> PeftReference:
    return PeftReference({name: adapters[name] for name in ("ina03", "ina01")})


def _greedy(url: str, model: str, ids: list[int]) -> list[int]:
    response = httpx.post(
        f"{url}/v1/completions",
        json={"model": model, "prompt": ids, "max_tokens": STEPS, "temperature": 0, "ignore_eos": True,
              "logprobs": 1, "return_tokens_as_token_ids": True},
        timeout=300,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return [
        int(token.removeprefix("token_id:")) for token in response.json()["choices"][0]["logprobs"]["tokens"]
    ]


def test_ina_from_lora_modules_serves_peft_tokens(server: str, peft: PeftReference) -> None:
    ids = peft.ids(PROMPTS[0])
    assert _greedy(server, "ina03", ids) == peft.greedy("ina03", ids, STEPS)


def test_bad_config_is_a_400_and_the_server_keeps_serving(
    server: str, adapters: dict[str, Path], peft: PeftReference
) -> None:
    response = httpx.post(
        f"{server}/v1/load_lora_adapter",
        json={"lora_name": "bad", "lora_path": str(adapters["bad"])},
        timeout=300,
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "`inhibition` must be a number in [0, 1); got 1.5" in message and "\n" not in message
    models = {card["id"] for card in httpx.get(f"{server}/v1/models", timeout=30).json()["data"]}
    assert "bad" not in models and "ina03" in models
    ids = peft.ids(PROMPTS[1])
    assert _greedy(server, "base", ids) == peft.greedy(None, ids, STEPS)  # still serving


def test_ina_loaded_at_run_time_serves_peft_tokens(
    server: str, adapters: dict[str, Path], peft: PeftReference
) -> None:
    response = httpx.post(
        f"{server}/v1/load_lora_adapter",
        json={"lora_name": "ina01", "lora_path": str(adapters["ina01"])},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    ids = peft.ids(PROMPTS[2])
    assert _greedy(server, "ina01", ids) == peft.greedy("ina01", ids, STEPS)


def test_without_the_plugin_vllm_refuses_the_ina_folder(adapters: dict[str, Path], tmp_path: Path) -> None:
    """The fail-closed guarantee: vLLM's own loader refuses the marker tensors unless the plugin is loaded."""
    folders = {name: str(adapters[name]) for name in ("ina03", "plain")}
    without = run_vllm("vllm_loader.py", {"folders": folders}, tmp_path, timeout=600, VLLM_PLUGINS="")
    assert "ina_inhibition is unsupported LoRA weight" in without["ina03"]["error"], without
    assert "ina" not in without["ina03"]["plugins"] and without["plain"]["error"] is None
    (tmp_path / "with").mkdir()
    with_plugin = run_vllm("vllm_loader.py", {"folders": folders}, tmp_path / "with", timeout=600)
    assert "ina" in with_plugin["ina03"]["plugins"] and with_plugin["ina03"]["error"] is None
    assert with_plugin["ina03"]["gate"] == [0.3, "leaky_relu", 0.01]
    assert json.dumps(with_plugin["plain"]["gate"]) == "null"
