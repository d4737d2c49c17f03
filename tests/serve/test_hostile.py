"""Hostile requests (issue 11): each one once broke the server; now each is refused or isolated.

Every test here reproduced its defect against the code before the fix: a dead decode thread, a 500 for a
whole batch, an internal TypeError, decoding on for a client that had gone, an unbounded attention map.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch

from ina.serve.engine import SamplingParams
from ina.serve.server import LiveServer
from tests.serve.engine_helpers import live_server

SEED_RANGE = "[-9223372036854775808, 18446744073709551615]"
CHAT = {"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def hostile_settings(serve_files: Any) -> Any:
    from ina.serve.settings import ServeSettings

    return ServeSettings(
        base_model=str(serve_files.base),
        adapters=serve_files.adapters,
        api_key="",
        max_tokens_cap=1500,
        max_body_bytes=20_000,
        max_attention_tokens=24,
    )


@pytest.fixture(scope="module")
def live(engine: Any, hostile_settings: Any) -> Iterator[LiveServer]:
    from ina.serve.api import create_app

    with LiveServer(create_app(engine, hostile_settings)) as server:
        yield server


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"], error
    return error


def _hold_worker(engine: Any, seconds: float) -> Any:
    """Keep the engine's worker busy, so requests sent meanwhile are admitted as one batch."""
    started = threading.Event()

    def hold() -> None:
        started.set()
        time.sleep(seconds)

    future = engine.run_exclusive(hold)
    assert started.wait(30)
    return future


# ---------------------------------------------------------------- 1. seeds outside the 64-bit range


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_seed_outside_the_generator_range_is_400(live: LiveServer, seed: int) -> None:
    for route, body in (
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "ina03", "prompt": "hi", "max_tokens": 4}),
        ("/completion", {"model": "ina03", "instruction": "hi", "max_new_tokens": 4}),
    ):
        error = _error(httpx.post(f"{live.url}{route}", json={**body, "seed": seed}, timeout=20), 400)
        assert error["param"] == "seed" and str(seed) in error["message"] and SEED_RANGE in error["message"]
    assert httpx.get(f"{live.url}/health").json()["active"] == 0


def test_the_largest_seed_with_several_choices_still_answers(live: LiveServer) -> None:
    body = {**CHAT, "seed": 2**64 - 1, "n": 3, "temperature": 1.0}
    first = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=30)
    assert first.status_code == 200, first.text
    again = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=30)
    assert first.json()["choices"] == again.json()["choices"]


def test_a_failing_row_fails_alone(engine: Any) -> None:
    """Rows whose seed the generator refuses, or whose sampling breaks (a NaN temperature, which the API
    never lets through), fail alone; the rows batched with them answer exactly as they do alone."""
    good = [
        ("ina03", engine.encode_text("The quick brown fox"), SamplingParams(max_tokens=8, temperature=0)),
        ("ina09", engine.encode_text("0 1 2 3"), SamplingParams(max_tokens=8, temperature=0.8, seed=5)),
        ("tiny-llama", engine.encode_text("hello"), SamplingParams(max_tokens=8, temperature=1.0, seed=2)),
    ]
    bad = [
        ("ina03", engine.encode_text("hello"), SamplingParams(max_tokens=8, temperature=1.0, seed=2**64)),
        ("ina09", engine.encode_text("hello"), SamplingParams(max_tokens=8, temperature=math.nan)),
        ("ina03", engine.encode_text("hello"), SamplingParams(max_tokens=8, temperature=1.0, top_p=math.nan)),
    ]
    alone = [engine.generate(*job, timeout=60) for job in good]
    before = engine.stats()
    held = _hold_worker(engine, 0.5)
    jobs = good[:2] + bad + good[2:]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: engine.generate(*job, timeout=60), jobs))
    held.result(30)
    together = results[:2] + results[-1:]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert all(r.finish_reason in ("stop", "length") for r in together)
    for result in results[2:-1]:
        assert result.finish_reason == "error" and result.error, result
    assert "seed" in results[2].error and "temperature" in results[3].error and "top_p" in results[4].error
    after = engine.stats()
    assert after["active_rows"] == 0 and after["max_rows_in_step"] >= 4
    assert after["completed"] - before["completed"] == len(jobs)
    # the worker is alive and serves the next request
    assert engine.generate(*good[0], timeout=60).token_ids == alone[0].token_ids


# ---------------------------------------------------------------- 2. a top_p that underflows float32


def test_top_p_that_rounds_to_zero_samples_the_top_token(live: LiveServer, engine: Any) -> None:
    tiny = {"model": "ina03", "prompt": "The quick brown fox", "max_tokens": 6, "temperature": 1.0}
    greedy = httpx.post(f"{live.url}/v1/completions", json={**tiny, "temperature": 0}, timeout=30).json()
    neighbour = {"model": "ina09", "prompt": "0 1 2 3", "max_tokens": 6, "temperature": 0}
    alone = httpx.post(f"{live.url}/v1/completions", json=neighbour, timeout=30).json()
    held = _hold_worker(engine, 0.4)  # both requests in one batch
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(httpx.post, f"{live.url}/v1/completions", json=body, timeout=30)
            for body in ({**tiny, "top_p": 1e-46, "seed": 1}, neighbour)
        ]
        replies = [future.result() for future in futures]
    held.result(30)
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    assert replies[0].json()["choices"][0]["text"] == greedy["choices"][0]["text"]
    assert replies[1].json()["choices"][0]["text"] == alone["choices"][0]["text"]


def test_sample_keeps_the_top_token_for_any_top_p() -> None:
    from ina.serve.engine.sampling import sample

    logits = torch.tensor([0.5, 3.0, -1.0, 2.9])
    generator = torch.Generator().manual_seed(0)
    for top_p in (1e-46, 1e-300, 5e-324, 1e-8):
        params = SamplingParams(temperature=1.0, top_p=top_p)
        assert {sample(logits, params, generator) for _ in range(20)} == {1}


# ---------------------------------------------------------------- 3. lone surrogates


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/completions", '{"model": "ina03", "prompt": "\\ud800x"}', "prompt"),
        ("/v1/completions", '{"model": "ina03", "prompt": ["ok", "\\udfffy"]}', "prompt"),
        (
            "/v1/chat/completions",
            '{"model": "ina03", "messages": [{"role": "user", "content": "\\ud800x"}]}',
            "messages",
        ),
        (
            "/v1/chat/completions",
            '{"model": "ina03", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
            "messages",
        ),
        (
            "/v1/chat/completions",
            '{"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "stop": "\\ud800"}',
            "stop",
        ),
        ("/completion", '{"instruction": "\\ud800x"}', "instruction"),
        ("/completion", '{"instruction": "ok", "input": "\\udc00"}', "input"),
        ("/v1/attention", '{"model": "ina03", "text": "\\ud800x"}', "text"),
        (
            "/v1/chat/completions",
            '{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
            "model",
        ),
    ],
)
def test_lone_surrogate_is_400_naming_the_field(live: LiveServer, route: str, body: str, param: str) -> None:
    reply = httpx.post(
        f"{live.url}{route}", content=body.encode(), headers={"content-type": "application/json"}, timeout=20
    )
    error = _error(reply, 400)
    assert error["param"] == param and "surrogate" in error["message"]


# ---------------------------------------------------------------- 4. a non-streamed client that hangs up


def test_non_streamed_client_gone_mid_decode_stops_the_work(live: LiveServer, engine: Any) -> None:
    """A client waiting for a 1,500-token answer hangs up while it decodes: the row is cancelled within a
    second or so, long before max_tokens (alone it decodes for 5-15 s here)."""
    body = json.dumps(
        {"model": "tiny-llama", "prompt": "hello", "max_tokens": 1500, "temperature": 0}
    ).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    before = engine.stats()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(head + body)
        deadline = time.time() + 20
        while engine.stats()["generated_tokens"] - before["generated_tokens"] < 20:
            assert time.time() < deadline, "the request never started decoding"
            time.sleep(0.02)
    hung_up = time.time()
    while engine.stats()["cancelled"] == before["cancelled"] and time.time() < hung_up + 10:
        time.sleep(0.02)
    after, waited = engine.stats(), time.time() - hung_up
    assert after["cancelled"] == before["cancelled"] + 1, "the row was not cancelled"
    assert waited < 5, f"cancelled {waited:.1f} s after the client hung up"
    assert after["generated_tokens"] - before["generated_tokens"] < 1500
    assert after["active_rows"] == 0 and httpx.get(f"{live.url}/health").json()["active"] == 0


# ---------------------------------------------------------------- 5. attention maps are bounded


def test_attention_refuses_texts_over_the_token_limit(live: LiveServer) -> None:
    url = f"{live.url}/v1/attention"
    ok = httpx.post(url, json={"model": "ina03", "text": "the cat sat", "layers": [1]}, timeout=30)
    assert ok.status_code == 200, ok.text
    words = " ".join(["word"] * 1000)
    error = _error(httpx.post(url, json={"model": "ina03", "text": words}, timeout=30), 400)
    assert error["param"] == "text" and error["code"] == "attention_too_long"
    assert "--max_attention_tokens" in error["message"] and "24" in error["message"]
    pair = {"model": "ina03", "text": "one two", "text_pair": words}
    assert _error(httpx.post(url, json=pair, timeout=30), 400)["param"] == "text"
    repeated = {"model": "ina03", "text": "hi", "layers": [1] * 1000}
    assert _error(httpx.post(url, json=repeated, timeout=30), 400)["param"] == "layers"


# ---------------------------------------------------------------- 6. smaller: limits, auth, codes, framing


def test_too_many_rows_in_one_request_is_400_not_503(live: LiveServer, engine: Any) -> None:
    """Mutation: `check_request` comparing with `--max_queue` (256) instead of the engine's row limit."""
    limit = engine.limits["max_rows_per_request"]
    prompts = ["a"] * (limit + 1)
    reply = httpx.post(f"{live.url}/v1/completions", json={"model": "ina03", "prompt": prompts}, timeout=30)
    error = _error(reply, 400)
    assert (
        error["param"] == "prompt"
        and f"at most {limit} completions (--max_rows_per_request)" in error["message"]
    )
    body = {"model": "ina03", "prompt": ["a"] * limit, "n": 2, "max_tokens": 1}
    assert _error(httpx.post(f"{live.url}/v1/completions", json=body, timeout=30), 400)["param"] == "n"
    assert httpx.get(f"{live.url}/health").json()["queued"] == 0


def test_bearer_scheme_is_case_insensitive(engine: Any, serve_files: Any) -> None:
    with live_server(engine, serve_files, api_key="s3cret") as server:
        for header in ("Bearer s3cret", "bearer s3cret", "BEARER s3cret", "beaRer   s3cret"):
            reply = httpx.get(f"{server.url}/v1/models", headers={"authorization": header})
            assert reply.status_code == 200, (header, reply.text)
        for header in ("Basic s3cret", "Bearer s3cre", "Bearers3cret", "s3cret", "Bearer"):
            error = _error(httpx.get(f"{server.url}/v1/models", headers={"authorization": header}), 401)
            assert error["code"] == "invalid_api_key"


def test_every_error_has_a_code(live: LiveServer) -> None:
    _error(httpx.get(f"{live.url}/v1/nothing"), 404)
    _error(httpx.get(f"{live.url}/v1/chat/completions"), 405)
    _error(httpx.get(f"{live.url}/v1/models/nope"), 404)
    _error(httpx.post(f"{live.url}/v1/completions", json={"model": "ina03", "prompt": "a", "n": 9}), 400)
    _error(httpx.post(f"{live.url}/completion", json={"model": "ina03", "instruction": "x" * 21_000}), 413)
    empty_user = {"model": "ina09", "messages": [{"role": "system", "content": "hi"}]}
    _error(httpx.post(f"{live.url}/v1/chat/completions", json=empty_user), 400)
    headers = {"content-type": "application/json"}
    for body in ('{"model": "ina03", "prompt": "hi", "seed": ' + "9" * 5000 + "}", "[" * 5000 + "]" * 5000):
        reply = httpx.post(f"{live.url}/v1/completions", content=body.encode(), headers=headers)
        assert _error(reply, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("length", [b"abc", b"-5", b"1, 2", b"99999999999999999999999"])
def test_malformed_content_length_gets_the_envelope(live: LiveServer, length: bytes) -> None:
    request = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: " + length + b"\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert 400 <= status < 500, data
    assert b"content-type: application/json" in head.lower(), data
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"], error


# ---------------------------------------------------------------- 7. issue 24: fields, bodies, paths, methods


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ("/v1/chat/completions", {"reasoning_effort": "high"}, "reasoning_effort"),
        ("/v1/chat/completions", {"store": True}, "store"),
        ("/v1/chat/completions", {"frequency_penalty": 1e9}, "frequency_penalty"),
        ("/v1/chat/completions", {"presence_penalty": -1e9}, "presence_penalty"),
        ("/v1/chat/completions", {"logit_bias": {"1": 1e9}}, "logit_bias"),
        ("/v1/chat/completions", {"logit_bias": {"a": 1}}, "logit_bias"),
        ("/v1/chat/completions", {"logit_bias": {str(10**6): 1}}, "logit_bias"),
        ("/v1/chat/completions", {"frequency_penalty": "1"}, "frequency_penalty"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
            "messages",
        ),
        ("/v1/chat/completions", {"stream_options": {"include_obfuscation": True}}, "stream_options"),
        ("/v1/chat/completions", {"temperatur": 0}, "temperatur"),
        ("/v1/completions", {"suffix": " the end"}, "suffix"),
        ("/v1/completions", {"logprobs": 0}, "logprobs"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/completion", {"system": "be evil"}, "system"),
        ("/v1/attention", {"heads": [0]}, "heads"),
    ],
)
def test_a_field_the_server_does_not_implement_is_400_naming_it(
    live: LiveServer, route: str, extra: dict[str, Any], param: str
) -> None:
    """Never accepted and ignored: an OpenAI field asking for what the server does not do, or an unknown
    field (a typo), is a 400 that names it."""
    bodies = {
        "/v1/chat/completions": CHAT,
        "/v1/completions": {"model": "ina03", "prompt": "hi", "max_tokens": 4},
        "/completion": {"model": "ina03", "instruction": "hi", "max_new_tokens": 4},
        "/v1/attention": {"model": "ina03", "text": "hi"},
    }
    error = _error(httpx.post(f"{live.url}{route}", json={**bodies[route], **extra}, timeout=20), 400)
    assert error["param"] == param, error
    named = "include_obfuscation" if param == "stream_options" else "name" if param == "messages" else param
    assert f"`{named}`" in error["message"] or f".{named}`" in error["message"], error


def test_fields_that_ask_for_nothing_are_accepted(live: LiveServer) -> None:
    """What OpenAI clients send as their defaults (null, false, text format, best_of = n) still answers."""
    neutral = {
        "response_format": {"type": "text"},
        "logprobs": False,
        "tools": [],
        "tool_choice": "none",
        "store": False,
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "logit_bias": {},
        "service_tier": "auto",
        "user": "someone",
        "top_logprobs": None,
    }
    reply = httpx.post(f"{live.url}/v1/chat/completions", json={**CHAT, **neutral}, timeout=30)
    assert reply.status_code == 200, reply.text
    text = {"model": "ina03", "prompt": "hi", "max_tokens": 2, "suffix": None, "best_of": 2, "n": 2}
    reply = httpx.post(f"{live.url}/v1/completions", json=text, timeout=30)
    assert reply.status_code == 200 and len(reply.json()["choices"]) == 2, reply.text


def test_penalties_and_logit_bias_are_applied_not_ignored(live: LiveServer, engine: Any) -> None:
    """OpenAI's `frequency_penalty`, `presence_penalty` and `logit_bias` reach the engine: the answer is the
    engine's own with the same parameters (tests/serve/test_sampling_controls.py checks the formula there),
    and a bias of 100 on one token makes greedy decoding repeat it.
    Mutation: `deps.sampling` leaving the three out of `SamplingParams`."""
    body = {"model": "ina03", "prompt": "Once upon", "max_tokens": 6, "temperature": 0}
    extra = {"frequency_penalty": 2.0, "presence_penalty": 1.5, "logit_bias": {"40": 4.0, "41": -100}}
    params = SamplingParams(
        6, 0.0, frequency_penalty=2.0, presence_penalty=1.5, logit_bias={40: 4.0, 41: -100.0}
    )
    expected = engine.generate("ina03", engine.encode_text("Once upon"), params, 60).text
    plain = engine.generate("ina03", engine.encode_text("Once upon"), SamplingParams(6, 0.0), 60).text
    assert expected != plain, "the parameters must change this answer, or the test shows nothing"
    reply = httpx.post(f"{live.url}/v1/completions", json={**body, **extra}, timeout=60)
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == expected, reply.text
    forced = httpx.post(f"{live.url}/v1/completions", json={**body, "logit_bias": {"77": 100}}, timeout=60)
    assert forced.json()["choices"][0]["text"] == engine.tokenizer.decode([77] * 6), forced.text


def test_openai_client_gets_a_typed_error_for_an_unimplemented_field(live: LiveServer) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="ina03", messages=CHAT["messages"], max_tokens=4, response_format={"type": "json_object"}
        )
    assert info.value.body["param"] == "response_format" and info.value.body["code"] == "unsupported"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="ina03", prompt="hi", max_tokens=4, suffix="!")
    assert info.value.body["param"] == "suffix"


def test_body_that_is_not_utf8_is_named_so(live: LiveServer) -> None:
    headers = {"content-type": "application/json"}
    for body, byte in ((b'{"model": "ina03", "prompt": "caf\xe9"}', "0xe9"), (b"\xff\xfe{}", "0xff")):
        error = _error(httpx.post(f"{live.url}/v1/completions", content=body, headers=headers), 400)
        assert (
            error["code"] == "invalid_encoding" and byte in error["message"] and "UTF-8" in error["message"]
        )
        assert "4300 digits" not in error["message"]
    error = _error(httpx.post(f"{live.url}/v1/completions", content=b'{"model": ', headers=headers), 400)
    assert error["code"] == "invalid_json" and "line 1 column" in error["message"]
    bom = "\ufeff" + json.dumps({"model": "ina03", "prompt": "hi", "max_tokens": 2})
    assert httpx.post(f"{live.url}/v1/completions", content=bom.encode(), headers=headers).status_code == 200


def test_a_form_encoded_body_is_415_saying_how_to_send_json(live: LiveServer) -> None:
    """curl -d without a Content-Type sends a form; the answer says which header to add."""
    reply = httpx.post(
        f"{live.url}/v1/completions",
        content=json.dumps({"model": "ina03", "prompt": "hi"}).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    error = _error(reply, 415)
    assert "application/json" in error["message"] and error["code"] == "unsupported_media_type"


def test_max_completion_tokens_over_the_cap_names_that_field(live: LiveServer, hostile_settings: Any) -> None:
    body = {**CHAT, "max_completion_tokens": hostile_settings.max_tokens_cap + 1}
    body.pop("max_tokens")
    error = _error(httpx.post(f"{live.url}/v1/chat/completions", json=body), 400)
    assert error["param"] == "max_completion_tokens" and "`max_completion_tokens`" in error["message"]
    both = {**body, "max_tokens": 4}  # max_completion_tokens, OpenAI's current name, wins
    assert (
        _error(httpx.post(f"{live.url}/v1/chat/completions", json=both), 400)["param"]
        == "max_completion_tokens"
    )


def test_a_trailing_slash_is_served_not_redirected(live: LiveServer) -> None:
    """A 307 would make clients send their POST twice (or not follow it at all)."""
    for method, path, body in (
        ("POST", "/v1/chat/completions/", CHAT),
        ("POST", "/v1/completions/", {"model": "ina03", "prompt": "hi", "max_tokens": 2}),
        ("GET", "/v1/models/", None),
        ("GET", "/v1/models/ina03/", None),
        ("GET", "/health/", None),
    ):
        reply = httpx.request(method, f"{live.url}{path}", json=body, timeout=30, follow_redirects=False)
        assert reply.status_code == 200, (path, reply.status_code, reply.text)


def test_head_is_answered_wherever_get_is(live: LiveServer) -> None:
    for path in ("/health", "/v1/models", "/v1/models/ina03", "/", "/static/app.js"):
        reply = httpx.head(f"{live.url}{path}")
        assert reply.status_code == 200 and reply.content == b"", (path, reply.status_code)
        assert int(reply.headers["content-length"]) > 0
    assert httpx.head(f"{live.url}/v1/completions").status_code == 405


def test_the_token_budget_over_http_is_a_400_beyond_itself_and_a_503_while_held(serve_files: Any) -> None:
    """Issue 24.2 over HTTP: a request larger than the whole budget is a 400 naming `max_tokens`; one that
    fits but not beside a request in progress is a 503 with `Retry-After`, and is served once that one is
    done. Mutation: `Waiting.put` without its budget checks (both requests are accepted)."""
    from ina.serve.engine import Engine
    from tests.serve.engine_helpers import held

    engine = Engine.load(serve_files.base, serve_files.adapters, dtype="float32", token_budget=100)
    engine.start()
    url = "/v1/completions"
    try:
        with live_server(engine, serve_files) as server, ThreadPoolExecutor(1) as pool:
            too_big = {"model": "ina03", "prompt": "hi", "max_tokens": 200}
            error = _error(httpx.post(f"{server.url}{url}", json=too_big, timeout=30), 400)
            assert (error["param"], error["code"]) == ("max_tokens", "exceeds_token_budget"), error
            assert "token budget of 100 (--token_budget)" in error["message"], error
            body = {"model": "ina03", "prompt": "hi", "max_tokens": 60, "temperature": 0}
            with held(engine):
                first = pool.submit(httpx.post, f"{server.url}{url}", json=body, timeout=60)
                deadline = time.monotonic() + 30
                while engine.stats()["reserved_tokens"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)  # until the first request holds its part of the budget
                refused = httpx.post(f"{server.url}{url}", json=body, timeout=30)
                assert refused.headers.get("retry-after") == "1", refused.headers
                assert _error(refused, 503)["code"] == "token_budget_full"
            assert first.result(60).status_code == 200
            assert httpx.post(f"{server.url}{url}", json=body, timeout=60).status_code == 200
    finally:
        engine.shutdown()
