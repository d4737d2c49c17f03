"""`ina serve` end to end: the real command in its own process, and its flag errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import httpx
import pytest

from ina.cli import main
from ina.serve.server import free_port, wait_until_healthy


def test_ina_serve_process_answers_and_stops(serve_files: Any) -> None:
    port = free_port()
    command = [sys.executable, "-m", "ina", "serve", "--base_model", str(serve_files.base)]
    command += ["--adapter", f"ina03={serve_files.adapters['ina03']}", "--port", str(port)]
    command += ["--api_key", "k3y", "--num_threads", "1", "--log_level", "warning", "--max_tokens_cap", "32"]
    env = {**os.environ, "INA_API_KEY": ""}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, timeout=90)
        models = httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer k3y"}).json()
        assert [m["id"] for m in models["data"]] == ["tiny-llama", "ina03"]
        body = {"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": "Bearer k3y"})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401
        too_many = {**body, "max_tokens": 33}
        reply = httpx.post(
            f"{url}/v1/chat/completions", json=too_many, headers={"authorization": "Bearer k3y"}
        )
        assert reply.status_code == 400 and "--max_tokens_cap" in reply.json()["error"]["message"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0


@pytest.mark.slow
def test_ina_serve_without_arguments_serves_the_embedded_model(tmp_path: object) -> None:
    """No flags: the embedded SmolLM2 (prepared by scripts/setup), answering a real chat request."""
    from ina.embedded.smollm import model_dir

    if not (model_dir() / "model.safetensors").is_file():
        pytest.skip("the embedded SmolLM2 is not prepared (run scripts/setup)")
    port = free_port()
    command = [sys.executable, "-m", "ina", "serve", "--port", str(port), "--log_level", "warning"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, timeout=300)
        assert httpx.get(f"{url}/health").json()["models"] == ["SmolLM2-135M-Instruct"]
        body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Say hello."}]}
        reply = httpx.post(
            f"{url}/v1/chat/completions", json={**body, "max_tokens": 8, "temperature": 0}, timeout=300
        )
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"].strip()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_flag_errors_name_the_flag(serve_files: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="--adapter must be NAME=PATH"):
        main(["serve", "--base_model", str(serve_files.base), "--adapter", "no-equals-sign"])
    code = main(["serve", "--base_model", str(serve_files.base), "--adapter", "bad.name=/nowhere"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--adapter NAME must be" in err and "no adapter_config.json" in err
