"""``POST /v1/chat/completions`` and ``POST /v1/completions``: OpenAI's generation routes, streamed or not."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ina.serve.api import schemas
from ina.serve.api.deps import EngineDep, SettingsDep, check_request, max_tokens_of, sampling
from ina.serve.api.streaming import Run, finish_reason, sse

router = APIRouter()


@router.post("/v1/chat/completions", response_model=schemas.ChatCompletion)
async def chat_completions(
    body: schemas.ChatCompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> schemas.ChatCompletion | StreamingResponse:
    check_request(engine, settings, body)
    max_tokens = max_tokens_of(settings, body.max_completion_tokens or body.max_tokens)
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
    ]
    prompt_ids = engine.encode_chat(body.model, messages)
    engine.check_length(prompt_ids, max_tokens, "messages")
    run = Run(engine, body.model, [(prompt_ids, sampling(body, max_tokens, i)) for i in range(body.n)])
    head = {"id": schemas.new_id("chatcmpl"), "created": schemas.now(), "model": body.model}

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(index: int, delta: schemas.ChatDelta, finish: str | None) -> schemas.ChatCompletionChunk:
            choice = schemas.ChatChunkChoice(index=index, delta=delta, finish_reason=finish)
            return schemas.ChatCompletionChunk(**head, choices=[choice])

        async def chunks() -> AsyncIterator[schemas.ChatCompletionChunk]:
            for i in range(body.n):
                yield chunk(i, schemas.ChatDelta(role="assistant", content=""), None)
            async for event in run.events():
                if event.text:
                    yield chunk(event.tag, schemas.ChatDelta(content=event.text), None)
                if event.finish_reason is not None:
                    yield chunk(event.tag, schemas.ChatDelta(), finish_reason(event))
            if include_usage:
                yield schemas.ChatCompletionChunk(**head, choices=[], usage=run.usage(len(prompt_ids)))

        return sse(chunks(), run)
    texts, events = await run.collect(request)
    choices = [
        schemas.ChatChoice(
            index=i, message=schemas.ChatMessageOut(content=texts[i]), finish_reason=finish_reason(events[i])
        )
        for i in range(body.n)
    ]
    return schemas.ChatCompletion(**head, choices=choices, usage=run.usage(len(prompt_ids)))


@router.post("/v1/completions", response_model=schemas.TextCompletion)
async def completions(
    body: schemas.CompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep
) -> schemas.TextCompletion | StreamingResponse:
    check_request(engine, settings, body)
    # OpenAI's default for text completions: 16 tokens (chat requests default to 256, or the cap if lower)
    if body.max_tokens is not None:
        max_tokens = max_tokens_of(settings, body.max_tokens)
    else:
        max_tokens = min(16, settings.max_tokens_cap)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    encoded = [engine.encode_text(p, "prompt") for p in prompts]
    for ids in encoded:
        engine.check_length(ids, max_tokens, "prompt")
    jobs = [(ids, sampling(body, max_tokens, i)) for ids in encoded for i in range(body.n)]
    run = Run(engine, body.model, jobs)
    prompt_tokens = sum(len(ids) for ids in encoded)
    head = {"id": schemas.new_id("cmpl"), "created": schemas.now(), "model": body.model}

    def prefix(index: int) -> str:
        return prompts[index // body.n] if body.echo else ""

    def completion(index: int, text: str, finish: str | None) -> schemas.TextCompletion:
        return schemas.TextCompletion(
            **head, choices=[schemas.TextChoice(index=index, text=text, finish_reason=finish)]
        )

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def chunks() -> AsyncIterator[schemas.TextCompletion]:
            if body.echo:
                for i in range(len(jobs)):
                    yield completion(i, prefix(i), None)
            async for event in run.events():
                if event.text or event.finish_reason is not None:
                    finish = None if event.finish_reason is None else finish_reason(event)
                    yield completion(event.tag, event.text, finish)
            if include_usage:
                yield schemas.TextCompletion(**head, choices=[], usage=run.usage(prompt_tokens))

        return sse(chunks(), run)
    texts, events = await run.collect(request)
    choices = [
        schemas.TextChoice(index=i, text=prefix(i) + texts[i], finish_reason=finish_reason(events[i]))
        for i in range(len(jobs))
    ]
    return schemas.TextCompletion(**head, choices=choices, usage=run.usage(prompt_tokens))
