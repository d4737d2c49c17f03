"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis, on hypothesis).

Requests that fit the schema (positive) and requests that break it (negative) go to a live server on the
tiny model, over real HTTP: no answer may be a 5xx, every error must be the envelope with a non-null
``code``, and every stream must end with ``[DONE]``. The examples are derandomized (the same ones on
every run) and few, and the server's limits small, so the whole fuzz stays within seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from ina.serve.server import LiveServer
from tests.serve.engine_helpers import live_server

OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/completion"),
    ("POST", "/v1/attention"),
]
MODEL_IDS = ["tiny-llama", "ina03", "ina09"]
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 12}
# (operation, mode) pairs: routes without parameters or a body have no invalid input to generate
CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in EXAMPLES
    if mode == GenerationMode.POSITIVE or method == "POST"
]


@pytest.fixture(scope="module")
def fuzz_server(engine: Any, serve_files: Any) -> Iterator[LiveServer]:
    with live_server(
        engine,
        serve_files,
        max_tokens_cap=6,  # each accepted request decodes a few tokens at most
        max_queue=12,  # n × prompts beyond this is a 400
        max_body_bytes=20_000,
        max_attention_tokens=12,
    ) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def test_the_fuzz_covers_every_operation(api_schema: Any) -> None:
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


def check_answer(response: Any, streamed: bool) -> None:
    """No 5xx; an error is the envelope with a code; a stream ends with [DONE] and carries no error."""
    status, text = response.status_code, response.text
    content_type = response.headers.get("content-type", [""])  # schemathesis: name -> list of values
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert status < 500, f"{status}: {text[:500]}"
    if status >= 400:
        assert content_type.startswith("application/json"), text[:500]
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["code"], str) and error["code"], error
        assert "Traceback" not in error["message"] and "internal error" not in error["message"], error
    elif streamed and content_type.startswith("text/event-stream"):
        events = [line for line in text.splitlines() if line]
        assert events and events[-1] == "data: [DONE]", text[-500:]
        assert not any('"error"' in line for line in events), text[:500]
    else:
        json.loads(text)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_fuzz_no_5xx_and_every_error_enveloped(
    api_schema: Any, fuzz_server: LiveServer, method: str, path: str, mode: GenerationMode
) -> None:
    strategy = st.tuples(
        api_schema[path][method].as_strategy(generation_mode=mode), st.sampled_from([*MODEL_IDS, None])
    )

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn=strategy)
    def fuzz(drawn: tuple[Any, str | None]) -> None:
        case, model = drawn
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model  # a served model, so that the request reaches the engine
        if model is not None and case.path_parameters and "model_id" in case.path_parameters:
            case.path_parameters["model_id"] = model
        response = case.call(base_url=fuzz_server.url, timeout=60)
        streamed = isinstance(case.body, dict) and case.body.get("stream") is True
        check_answer(response, streamed)

    fuzz()
    assert httpx.get(f"{fuzz_server.url}/health", timeout=10).json()["status"] == "ok"
