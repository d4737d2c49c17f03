"""The OpenAI-compatible API against a live server, through the official `openai` client and raw HTTP."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from ina.serve.engine import SamplingParams
from tests.serve.engine_helpers import live_server


def test_models_lists_base_and_adapters(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["tiny-llama", "ina03", "ina09"]
    assert client.models.retrieve("ina03").id == "ina03"


def test_chat_matches_engine_and_adapters_differ(client: openai.OpenAI, engine: object) -> None:
    messages = [{"role": "user", "content": "Tell me a joke about a cat"}]
    answers = {}
    for model in ("tiny-llama", "ina03", "ina09"):
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
        choice = reply.choices[0]
        assert reply.object == "chat.completion" and reply.model == model
        assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
        prompt_ids = engine.encode_chat(model, messages)
        assert reply.usage.prompt_tokens == len(prompt_ids)
        direct = engine.generate(model, prompt_ids, SamplingParams(max_tokens=12, temperature=0))
        assert choice.message.content == direct.text
        assert reply.usage.completion_tokens == direct.completion_tokens
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        answers[model] = direct.token_ids
    assert len({tuple(ids) for ids in answers.values()}) == 3, "each adapter must change the output"


def test_chat_stream_ends_with_done_and_matches(client: openai.OpenAI, server: object) -> None:
    kwargs = dict(model="ina03", messages=[{"role": "user", "content": "The quick brown fox"}], max_tokens=16)
    whole = client.chat.completions.create(temperature=0, **kwargs).choices[0].message.content
    stream = client.chat.completions.create(
        temperature=0, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole
    assert finish in ("stop", "length") and usage is not None and usage.completion_tokens >= 1
    # the raw stream is server-sent events ending in [DONE]
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**kwargs, "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_chat_stream_with_n_choices(client: openai.OpenAI) -> None:
    kwargs = dict(model="ina09", messages=[{"role": "user", "content": "Tell me a joke"}], max_tokens=8, n=2)
    texts, finished = {0: "", 1: ""}, set()
    for chunk in client.chat.completions.create(temperature=1.0, seed=3, stream=True, **kwargs):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    whole = client.chat.completions.create(temperature=1.0, seed=3, **kwargs)
    assert [c.message.content for c in whole.choices] == [texts[0], texts[1]]


def test_completion_prompt_list_n_echo_and_stream(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="ina09", prompt=["I put my red bag", "What is"], max_tokens=6, temperature=0, n=2
    )
    assert reply.object == "text_completion" and len(reply.choices) == 4
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text == reply.choices[1].text  # greedy: both choices agree
    echoed = client.completions.create(
        model="ina09", prompt="What is", max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "What is" + reply.choices[2].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="ina09", prompt="What is", max_tokens=6, temperature=0, stream=True
        )
    )
    assert streamed == reply.choices[2].text
    default = client.completions.create(model="tiny-llama", prompt="The quick", temperature=0)
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens for completions


def test_sampling_seed_reproducible_and_n_choices_differ(client: openai.OpenAI) -> None:
    kwargs = dict(model="tiny-llama", prompt="The quick brown fox", max_tokens=10, temperature=1.0, top_p=0.9)
    first = client.completions.create(seed=7, n=3, **kwargs)
    again = client.completions.create(seed=7, n=3, **kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1


def test_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    kwargs = dict(model="ina03", prompt="Tell me a joke", max_tokens=24, temperature=0)
    full = client.completions.create(**kwargs).choices[0].text
    assert len(full) >= 4
    stop = full[2:4]
    cut = client.completions.create(stop=[stop], **kwargs).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_seed_instruction_route(server: object, engine: object) -> None:
    body = {"instruction": "Judge the sentiment", "input": "I like it", "model": "ina03", "max_new_tokens": 8}
    reply = httpx.post(f"{server.url}/completion", json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    prompt_ids = engine.encode_instruction("ina03", "Judge the sentiment", "I like it")
    expected = engine.generate("ina03", prompt_ids, SamplingParams(max_tokens=8, temperature=0)).text
    assert data["response"] == expected and data["model"] == "ina03"
    assert "### Input:" in engine.tokenizer.decode(prompt_ids)
    assert httpx.post(f"{server.url}/completion/", json=body).json()["response"] == expected


def test_prompt_template_follows_the_adapter(engine: object) -> None:
    """ina09 was trained on Alpaca prompts (its ina_prompt.json), so chat turns become Alpaca instructions."""
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Name a colour"}]
    alpaca = engine.tokenizer.decode(engine.encode_chat("ina09", messages))
    assert "### Instruction:\nName a colour\n\n### Response:\n" in alpaca
    chat = engine.tokenizer.decode(engine.encode_chat("ina03", messages))
    assert "<|im_start|>user\nName a colour<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")


def test_health_is_public(server: object) -> None:
    data = httpx.get(f"{server.url}/health").json()
    assert data["status"] == "ok" and data["models"] == ["tiny-llama", "ina03", "ina09"]


# ---------------------------------------------------------------- errors


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert "ina03" in str(info.value) and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="ina03", messages=[{"role": "user", "content": "hi"}], max_tokens=65
        )
    assert info.value.body["param"] == "max_tokens" and "64" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ina03", messages=[])
    assert info.value.body["param"] == "messages"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"},
            "max_tokens",
        ),
        (
            {"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "temperature": 5},
            "temperature",
        ),
        ({"model": "ina03", "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"model": "ina03", "messages": "hi"}, "messages"),
        ({"model": 3, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "n": 9}, "n"),
        ({"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5}, "stop"),
        ({"model": "ina03", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ],
)
def test_bad_chat_bodies_are_400(server: object, body: dict[str, object], param: str) -> None:
    error = _error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_malformed_json_oversized_body_unknown_route(server: object) -> None:
    url = f"{server.url}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    assert (
        _error(httpx.post(url, content=b'{"model": "ina03", "messages": [', headers=headers), 400)["code"]
        == "invalid_json"
    )
    _error(httpx.post(url, content=b"[1, 2]", headers=headers), 400)
    huge = {"model": "ina03", "messages": [{"role": "user", "content": "x" * 30_000}]}
    assert _error(httpx.post(url, json=huge), 413)["code"] == "request_too_large"
    _error(httpx.get(f"{server.url}/v1/nothing"), 404)
    _error(httpx.get(url), 405)
    # the prompt longer than the model's context is refused with the rule
    long = {"model": "ina03", "prompt": "cat " * 2100, "max_tokens": 4}
    assert (
        _error(httpx.post(f"{server.url}/v1/completions", json=long), 400)["code"]
        == "context_length_exceeded"
    )
    assert httpx.get(f"{server.url}/health").status_code == 200  # still alive


def test_api_key_guards_every_route_but_health(engine: object, serve_files: object) -> None:
    with live_server(engine, serve_files, api_key="s3cret") as live:  # type: ignore[arg-type]
        assert httpx.get(f"{live.url}/health").status_code == 200
        assert _error(httpx.get(f"{live.url}/v1/models"), 401)["code"] == "invalid_api_key"
        wrong = {"authorization": "Bearer nope"}
        _error(httpx.post(f"{live.url}/v1/completions", json={}, headers=wrong), 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{live.url}/v1", api_key="nope", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{live.url}/v1", api_key="s3cret", max_retries=0)
        assert next(m.id for m in good.models.list()) == "tiny-llama"


def test_attention_route(server: object) -> None:
    reply = httpx.post(
        f"{server.url}/v1/attention",
        json={"model": "ina03", "text": "I put my red bag in the black bag.", "layers": [1]},
        timeout=60,
    )
    if reply.status_code == 501:
        pytest.skip(reply.json()["error"]["message"])
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["model"] == "ina03" and data["tokens"]
    bad = {"model": "ina03", "text": "hi", "layers": [99]}
    assert _error(httpx.post(f"{server.url}/v1/attention", json=bad), 400)["param"] == "layers"
    _error(httpx.post(f"{server.url}/v1/attention", json={"model": "nope", "text": "hi"}), 404)
