"""`ina serve` end to end: the real command in its own process, and its flag errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
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
    limits = {"token_budget": 5000, "max_rows_per_request": 3, "prefill_chunk_tokens": 64, "max_queue": 9}
    command += [word for key, value in limits.items() for word in (f"--{key}", str(value))]
    env = {**os.environ, "INA_API_KEY": ""}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, timeout=90)
        health = httpx.get(f"{url}/health").json()  # the flags reach the engine
        assert {key: health["limits"][key] for key in limits} == limits, health
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
        # the README's adapter id, not served from this folder: the 404 says why
        missing = httpx.post(f"{url}/v1/chat/completions", json={**body, "model": "ina-finetune-smollm2"})
        assert missing.status_code == 404
        assert "serving the base model alone" in missing.json()["error"]["message"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = process.stdout.read() if process.stdout else ""
    assert "serving the base model alone" in output and str(tmp_path) in output, output


def test_flag_errors_name_the_flag(serve_files: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--base_model", str(serve_files.base), "--adapter", "no-equals-sign"]) == 2
    assert "--adapter must be NAME=PATH" in capsys.readouterr().err
    code = main(["serve", "--base_model", str(serve_files.base), "--adapter", "bad.name=/nowhere"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--adapter NAME must be" in err and "/nowhere: no such folder" in err
    assert "Repo id" not in err and "trained on this base model" not in err


def test_missing_or_damaged_adapter_is_one_line(
    serve_files: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real cause, in one line and exit code 2, before any model is loaded."""
    base = ["serve", "--base_model", str(serve_files.base), "--port", "0"]
    assert main([*base, "--adapter", f"gone={tmp_path / 'gone'}"]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "Repo id" not in err and "trained on this base model" not in err
    assert len(err.strip().splitlines()) == 1
    damaged = tmp_path / "damaged"
    shutil.copytree(serve_files.adapters["ina03"], damaged)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main([*base, "--adapter", f"damaged={damaged}"]) == 2
    err = capsys.readouterr().err
    assert "damaged=" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_without_adapters_it_says_what_it_serves(tmp_path: Path) -> None:
    from ina.embedded import DEMO_ADAPTER_DIR
    from ina.serve.cli import default_adapters

    adapters, note = default_adapters(tmp_path)
    assert adapters == {} and "serving the base model alone" in note
    assert str(tmp_path) in note and DEMO_ADAPTER_DIR in note and "--adapter ina-finetune-smollm2=" in note
    folder = tmp_path / DEMO_ADAPTER_DIR
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    adapters, note = default_adapters(tmp_path)
    assert adapters == {"ina-finetune-smollm2": str(folder)} and str(folder) in note


def test_unserved_model_404_says_why(engine: Any, serve_files: Any) -> None:
    from tests.serve.engine_helpers import live_server

    why = "serving the base model alone: no --adapter was given and /somewhere holds no outputs/..."
    with live_server(engine, serve_files, adapters={}, unserved={"ina-finetune-smollm2": why}) as live:
        body = {"model": "ina-finetune-smollm2", "messages": [{"role": "user", "content": "hi"}]}
        for reply in (
            httpx.post(f"{live.url}/v1/chat/completions", json=body),
            httpx.get(f"{live.url}/v1/models/ina-finetune-smollm2"),
        ):
            assert reply.status_code == 404
            error = reply.json()["error"]
            assert why in error["message"] and "'tiny-llama'" in error["message"]
            assert error["code"] == "model_not_found"
        other = httpx.post(f"{live.url}/v1/chat/completions", json={**body, "model": "nope"}).json()
        assert "not served" not in other["error"]["message"]
