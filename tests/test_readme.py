"""The README's Python examples run, so they cannot rot.

Examples that talk to `ina serve` run against a real server on a free loopback port, serving a tiny
base model with an adapter under the id the README uses.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
README_SERVER = "http://127.0.0.1:8000"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run(block: str) -> None:
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})


def test_readme_python_examples_run():
    blocks = [b for b in python_blocks(README.read_text()) if README_SERVER not in b]
    assert blocks, "README.md has no ```python example"
    for block in blocks:
        run(block)


def test_readme_client_examples_run_against_a_live_server(tmp_path):
    blocks = [b for b in python_blocks(README.read_text()) if README_SERVER in b]
    if not blocks:
        pytest.skip("README.md has no client example")
    from ina.serve.api import create_app
    from ina.serve.engine import Engine
    from ina.serve.server import LiveServer
    from ina.serve.settings import ServeSettings
    from ina.testing import save_demo_adapter, tiny_model, tiny_tokenizer

    model_ids = set(re.findall(r'model="([^"]+)"', "\n".join(blocks)))
    tiny_model("llama").save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    adapters = {}
    for seed, name in enumerate(sorted(model_ids), start=1):
        save_demo_adapter(tmp_path / "base", tmp_path / name, 0.3, seed, ["q_proj", "v_proj"])
        adapters[name] = str(tmp_path / name)
    settings = ServeSettings(
        base_model=str(tmp_path / "base"), adapters=adapters, api_key="", max_tokens_cap=32
    )
    engine = Engine.load(settings.base_model, adapters, base_model_id="base")
    engine.start()
    try:
        with LiveServer(create_app(engine, settings)) as live:
            for block in blocks:
                run(block.replace(README_SERVER, live.url))
    finally:
        engine.shutdown()
