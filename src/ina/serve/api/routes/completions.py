"""``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI's generation routes, streamed or not."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ina.serve.api import responses, schemas
from ina.serve.api.bodies import OffLoopBody, off_loop
from ina.serve.api.deps import EngineDep, SettingsDep, check_request, max_tokens_of, sampling
from ina.serve.api.streaming import Run, finish_reason, sse
from ina.serve.engine import Engine

router = APIRouter(route_class=OffLoopBody)


@router.post("/v1/chat/completions", response_model=responses.ChatCompletion)
async def chat_completions(
    body: schemas.ChatCompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> responses.ChatCompletion | StreamingResponse:
    check_request(engine, settings, body)
    max_tokens = max_tokens_of(settings, *body.max_tokens_field())
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    # tokenising (a template over many messages, a long text) is CPU work: off the event loop
    prompt_ids = await off_loop(request, encode_chat, engine, body.model, messages, max_tokens)
    run = Run(engine, body.model, [(prompt_ids, sampling(body, max_tokens, i)) for i in range(body.n)])
    head = {"id": responses.new_id("chatcmpl"), "created": responses.now(), "model": body.model}

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(
            index: int, delta: responses.ChatDelta, finish: str | None
        ) -> responses.ChatCompletionChunk:
            choice = responses.ChatChunkChoice(index=index, delta=delta, finish_reason=finish)
            return responses.ChatCompletionChunk(**head, choices=[choice])

        async def chunks() -> AsyncIterator[responses.ChatCompletionChunk]:
            for i in range(body.n):
                yield chunk(i, responses.ChatDelta(role="assistant", content=""), None)
            async for event in run.events():
                if event.text:
                    yield chunk(event.tag, responses.ChatDelta(content=event.text), None)
                if event.finish_reason is not None:
                    yield chunk(event.tag, responses.ChatDelta(), finish_reason(event))
            if include_usage:
                yield responses.ChatCompletionChunk(**head, choices=[], usage=run.usage(len(prompt_ids)))

        return sse(chunks(), run)
    texts, events = await run.collect(request)
    choices = [
        responses.ChatChoice(
            index=i,
            message=responses.ChatMessageOut(content=texts[i]),
            finish_reason=finish_reason(events[i]),
        )
        for i in range(body.n)
    ]
    return responses.ChatCompletion(**head, choices=choices, usage=run.usage(len(prompt_ids)))


@router.post("/v1/completions", response_model=responses.TextCompletion)
async def completions(
    body: schemas.CompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> responses.TextCompletion | StreamingResponse:
    check_request(engine, settings, body)
    # OpenAI's default for text completions: 16 tokens (chat requests default to 256, or the cap if lower)
    if body.max_tokens is not None:
        max_tokens = max_tokens_of(settings, body.max_tokens)
    else:
        max_tokens = min(16, settings.max_tokens_cap)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    encoded = await off_loop(request, encode_prompts, engine, prompts, max_tokens)
    jobs = [(ids, sampling(body, max_tokens, i)) for ids in encoded for i in range(body.n)]
    run = Run(engine, body.model, jobs)
    prompt_tokens = sum(len(ids) for ids in encoded)
    head = {"id": responses.new_id("cmpl"), "created": responses.now(), "model": body.model}

    def prefix(index: int) -> str:
        return prompts[index // body.n] if body.echo else ""

    def completion(index: int, text: str, finish: str | None) -> responses.TextCompletion:
        return responses.TextCompletion(
            **head, choices=[responses.TextChoice(index=index, text=text, finish_reason=finish)]
        )

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def chunks() -> AsyncIterator[responses.TextCompletion]:
            if body.echo:
                for i in range(len(jobs)):
                    yield completion(i, prefix(i), None)
            async for event in run.events():
                if event.text or event.finish_reason is not None:
                    finish = None if event.finish_reason is None else finish_reason(event)
                    yield completion(event.tag, event.text, finish)
            if include_usage:
                yield responses.TextCompletion(**head, choices=[], usage=run.usage(prompt_tokens))

        return sse(chunks(), run)
    texts, events = await run.collect(request)
    choices = [
        responses.TextChoice(index=i, text=prefix(i) + texts[i], finish_reason=finish_reason(events[i]))
        for i in range(len(jobs))
    ]
    return responses.TextCompletion(**head, choices=choices, usage=run.usage(prompt_tokens))


def encode_chat(engine: Engine, model: str, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
    """The chat's token ids, if they fit the context with ``max_tokens`` new ones (on a worker thread)."""
    prompt_ids = engine.encode_chat(model, messages)
    engine.check_length(prompt_ids, max_tokens, "messages")
    return prompt_ids


def encode_prompts(engine: Engine, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """Each prompt's token ids, if each fits the context with ``max_tokens`` new ones (on a worker thread)."""
    encoded = [engine.encode_text(prompt, "prompt") for prompt in prompts]
    for ids in encoded:
        engine.check_length(ids, max_tokens, "prompt")
    return encoded
