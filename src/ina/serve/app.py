"""The FastAPI app: OpenAI-compatible routes, the seed's ``/completion``, attention maps and the web UI.

``create_app(engine, settings)`` builds a new app around an :class:`~ina.serve.engine.Engine`; the
app keeps no model state of its own (nothing at module level), so tests can run several side by side.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ina.serve import schemas
from ina.serve.engine import (
    Engine,
    EngineError,
    Event,
    OverloadedError,
    PromptError,
    SamplingParams,
    UnknownModelError,
)
from ina.serve.errors import APIError, error_body, invalid_request, model_not_found
from ina.serve.settings import BASE_ADAPTER, ServeSettings

logger = logging.getLogger("ina.serve")

# Routes reachable without the API key: the health probe and the UI's own files (they hold no data;
# the UI asks for the key and sends it with every API call).
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[..., Awaitable[None]]], Awaitable[None]
]


def static_dir() -> str:
    """The folder of the web UI's files shipped in the package."""
    return str(resources.files("ina.serve") / "static")


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """A new FastAPI app serving ``engine`` under ``settings`` (API key, caps, body limit)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield

    from ina import __version__

    # No /docs: Swagger UI loads its assets from a CDN, and this server must work offline.
    app = FastAPI(title="ina serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.settings = engine, settings
    created = schemas.now()
    _install_error_handlers(app)
    app.add_middleware(_Guard, settings=settings)  # type: ignore[arg-type]

    def resolve(model: str) -> str:
        try:
            return engine.resolve(model)
        except UnknownModelError:
            raise model_not_found(model, engine.model_ids) from None

    def max_tokens_of(requested: int | None, param: str = "max_tokens") -> int:
        if requested is None:
            return settings.default_max_tokens
        if requested > settings.max_tokens_cap:
            raise invalid_request(
                f"`{param}` must be at most {settings.max_tokens_cap} on this server (--max_tokens_cap); "
                f"got {requested}",
                param,
                "max_tokens_exceeded",
            )
        return requested

    def check_n(n: int) -> None:
        if n > settings.max_n:
            raise invalid_request(f"`n` must be at most {settings.max_n} on this server; got {n}", "n")

    def check_supported(body: schemas.ChatCompletionRequest | schemas.CompletionRequest) -> None:
        feature = body.unsupported()
        if feature is not None:
            raise invalid_request(
                f"`{feature}` is not supported by ina serve; leave it out of the request",
                feature,
                "unsupported",
            )

    def sampling(body: schemas._Sampling, max_tokens: int, i: int) -> SamplingParams:
        seed = None if body.seed is None else body.seed + i
        return SamplingParams(max_tokens, body.temperature, body.top_p, body.stops(), seed)

    # ---------------------------------------------------------------- info routes

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats = engine.stats()
        return {
            "status": "ok",
            "models": engine.model_ids,
            "max_tokens_cap": settings.max_tokens_cap,
            "active": stats["active_rows"],
            "queued": stats["queued"],
        }

    def cards() -> list[dict[str, Any]]:
        base = engine.base_model_id
        data = [schemas.model_card(base, "ina", created, root=base, parent=None)]
        data += [schemas.model_card(name, "ina", created, root=base, parent=base) for name in engine.adapters]
        return data

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": cards()}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for card in cards():
            if card["id"] == model_id:
                return card
        raise model_not_found(model_id, engine.model_ids)

    # ---------------------------------------------------------------- generation routes

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: schemas.ChatCompletionRequest, request: Request) -> Any:
        resolve(body.model)
        check_n(body.n)
        check_supported(body)
        max_tokens = max_tokens_of(body.max_completion_tokens or body.max_tokens)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        prompt_ids = _engine_call(engine.encode_chat, body.model, messages)
        _engine_call(engine.check_length, prompt_ids, max_tokens, "messages")
        run = _Run(engine, body.model, [(prompt_ids, sampling(body, max_tokens, i)) for i in range(body.n)])
        rid, stamp = schemas.new_id("chatcmpl"), schemas.now()

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
            return _envelope(rid, "chat.completion.chunk", stamp, body.model, choices, usage)

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def chunks() -> AsyncIterator[dict[str, Any]]:
                for i in range(body.n):
                    yield chunk([_chat_choice(i, {"role": "assistant", "content": ""}, None)])
                async for event in run.events():
                    if event.text:
                        yield chunk([_chat_choice(event.tag, {"content": event.text}, None)])
                    if event.finish_reason is not None:
                        yield chunk([_chat_choice(event.tag, {}, _finish_reason(event))])
                if include_usage:
                    yield chunk([], run.usage(len(prompt_ids)))

            return _sse(chunks(), run)
        texts, events = await run.collect(request)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts[i]},
                "logprobs": None,
                "finish_reason": _finish_reason(events[i]),
            }
            for i in range(body.n)
        ]
        return _envelope(rid, "chat.completion", stamp, body.model, choices, run.usage(len(prompt_ids)))

    @app.post("/v1/completions", response_model=None)
    async def completions(body: schemas.CompletionRequest, request: Request) -> Any:
        resolve(body.model)
        check_n(body.n)
        check_supported(body)
        # OpenAI's default for text completions: 16 tokens (chat requests default to 256, or the cap if lower)
        max_tokens = (
            max_tokens_of(body.max_tokens)
            if body.max_tokens is not None
            else min(16, settings.max_tokens_cap)
        )
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        encoded = [_engine_call(engine.encode_text, p, "prompt") for p in prompts]
        for ids in encoded:
            _engine_call(engine.check_length, ids, max_tokens, "prompt")
        jobs = [(ids, sampling(body, max_tokens, i)) for ids in encoded for i in range(body.n)]
        run = _Run(engine, body.model, jobs)
        prompt_tokens = sum(len(ids) for ids in encoded)
        rid, stamp = schemas.new_id("cmpl"), schemas.now()

        def prefix(index: int) -> str:
            return prompts[index // body.n] if body.echo else ""

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
            return _envelope(rid, "text_completion", stamp, body.model, choices, usage)

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def chunks() -> AsyncIterator[dict[str, Any]]:
                if body.echo:
                    for i in range(len(jobs)):
                        yield chunk([_text_choice(i, prefix(i), None)])
                async for event in run.events():
                    if event.text or event.finish_reason is not None:
                        finish = None if event.finish_reason is None else _finish_reason(event)
                        yield chunk([_text_choice(event.tag, event.text, finish)])
                if include_usage:
                    yield chunk([], run.usage(prompt_tokens))

            return _sse(chunks(), run)
        texts, events = await run.collect(request)
        choices = [_text_choice(i, prefix(i) + texts[i], _finish_reason(events[i])) for i in range(len(jobs))]
        return _envelope(rid, "text_completion", stamp, body.model, choices, run.usage(prompt_tokens))

    async def instruction_completion(body: schemas.InstructionRequest, request: Request) -> dict[str, Any]:
        model = body.model or (engine.adapters[0] if engine.adapters else engine.base_model_id)
        resolve(model)
        param = "max_new_tokens" if body.max_new_tokens is not None else "max_tokens"
        max_tokens = max_tokens_of(body.max_new_tokens or body.max_tokens, param)
        prompt_ids = _engine_call(engine.encode_instruction, model, body.instruction, body.input)
        _engine_call(engine.check_length, prompt_ids, max_tokens, "instruction")
        params = SamplingParams(max_tokens, body.temperature, body.top_p, (), body.seed)
        run = _Run(engine, model, [(prompt_ids, params)])
        texts, events = await run.collect(request)
        return {
            "id": schemas.new_id("cmpl"),
            "object": "instruction.completion",
            "created": schemas.now(),
            "model": model,
            "instruction": body.instruction,
            "input": body.input,
            "response": texts[0],
            "finish_reason": _finish_reason(events[0]),
            "usage": run.usage(len(prompt_ids)),
        }

    # The seed's route, with and without its trailing slash.
    app.post("/completion")(instruction_completion)
    app.post("/completion/", include_in_schema=False)(instruction_completion)

    @app.post("/v1/attention")
    async def attention(body: schemas.AttentionRequest) -> Any:
        adapter = resolve(body.model)
        try:
            from ina.foundation.attention import AttentionUnavailableError, compute_attention
        except ImportError as error:
            raise APIError(
                501,
                f"attention maps need the module ina.foundation.attention, which could not be imported ({error}); "
                "install ina with its viz extra",
                "not_implemented_error",
                None,
                "not_implemented",
            ) from None

        def job() -> dict[str, Any]:
            with engine.tokenizer_lock:  # it tokenizes with its own truncation settings
                return compute_attention(
                    engine.model,
                    engine.tokenizer,
                    body.text,
                    text_pair=body.text_pair,
                    layers=body.layers,
                    adapter_name=None if adapter == BASE_ADAPTER else adapter,
                )

        try:
            result = await asyncio.wrap_future(engine.run_exclusive(job))
        except (ValueError, IndexError) as error:
            raise invalid_request(str(error), "layers" if "layer" in str(error) else "text") from None
        except AttentionUnavailableError as error:  # the model cannot return attention weights
            raise APIError(
                422, str(error), "invalid_request_error", "model", "attention_unavailable"
            ) from None
        return {"object": "attention", "model": body.model, **result}

    # ---------------------------------------------------------------- web UI

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(f"{static_dir()}/index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app


def _engine_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call an engine function, turning its input errors into 4xx envelopes."""
    try:
        return fn(*args)
    except EngineError as error:
        raise _api_error(error) from None


def _api_error(error: EngineError) -> APIError:
    if isinstance(error, UnknownModelError):
        return model_not_found(error.model, error.available)
    if isinstance(error, OverloadedError):
        return APIError(503, str(error), "server_error", None, error.code)
    if isinstance(error, PromptError):
        return invalid_request(str(error), error.param, error.code)
    return APIError(500, str(error), "server_error")


def _envelope(
    rid: str, kind: str, stamp: int, model: str, choices: list[dict[str, Any]], usage: dict[str, int] | None
) -> dict[str, Any]:
    """The fields every completion response and stream chunk carries (OpenAI's shape)."""
    return {
        "id": rid,
        "object": kind,
        "created": stamp,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        **({"usage": usage} if usage is not None else {}),
    }


def _chat_choice(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _text_choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _finish_reason(event: Event) -> str:
    return "length" if event.finish_reason == "length" else "stop"


class _Run:
    """Generations of one request (``n`` choices, or one per prompt), submitted together.

    Events come back from the engine's thread into this request's event loop through a queue.
    """

    def __init__(self, engine: Engine, model: str, jobs: list[tuple[list[int], SamplingParams]]) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.texts = [""] * len(jobs)
        self.finals: list[Event | None] = [None] * len(jobs)

        def on_event(event: Event) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, event)

        self.generations = []
        try:
            for i, (ids, params) in enumerate(jobs):
                self.generations.append(engine.submit(model, ids, params, on_event, tag=i))
        except EngineError as error:
            self.cancel()
            raise _api_error(error) from None

    def cancel(self) -> None:
        for generation in self.generations:
            generation.cancel()

    async def events(self, request: Request | None = None) -> AsyncIterator[Event]:
        """Every event until all generations have finished; checks for a gone client while waiting."""
        remaining = len(self.generations)
        getter: asyncio.Task[Event] | None = None
        try:
            while remaining:
                if getter is None:
                    getter = asyncio.ensure_future(self.queue.get())
                done, _ = await asyncio.wait({getter}, timeout=0.5)
                if not done:
                    if request is not None and await request.is_disconnected():
                        raise _ClientGone
                    continue
                event, getter = getter.result(), None
                self.texts[event.tag] += event.text
                if event.finish_reason == "error":
                    raise APIError(
                        500, f"generation failed: {event.error}", "server_error", None, "engine_error"
                    )
                if event.finish_reason is not None:
                    self.finals[event.tag] = event
                    remaining -= 1
                yield event
        finally:
            if getter is not None:
                getter.cancel()
            self.cancel()

    async def collect(self, request: Request) -> tuple[list[str], list[Event]]:
        """Wait for every generation (cancelling them all if the client goes away)."""
        async for _ in self.events(request):
            pass
        return self.texts, [event for event in self.finals if event is not None]

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        completion = sum(event.completion_tokens for event in self.finals if event is not None)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }


class _ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def _sse(chunks: AsyncIterator[dict[str, Any]], run: _Run) -> StreamingResponse:
    """Server-sent events: one ``data: {json}`` per chunk, then ``data: [DONE]``.

    If the client disconnects, the server stops iterating and ``run.cancel()`` frees its rows.
    """

    async def body() -> AsyncIterator[str]:
        try:
            async for item in chunks:
                yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
        except APIError as error:
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            run.cancel()
        yield "data: [DONE]\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# -------------------------------------------------------------------- errors and middleware


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, APIError)
        return JSONResponse(error.body(), status_code=error.status)

    async def validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return JSONResponse(_validation_envelope(error.errors()), status_code=400)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        if error.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the API is described at /openapi.json"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return JSONResponse(error_body(message, kind), status_code=error.status_code, headers=error.headers)

    async def client_gone(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_body("client closed the request", "invalid_request_error"), status_code=499)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        message = f"internal error: {type(error).__name__}: {error}"
        return JSONResponse(error_body(message, "server_error"), status_code=500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(_ClientGone, client_gone)
    app.add_exception_handler(Exception, unexpected)


def _validation_envelope(errors: Any) -> dict[str, Any]:
    """The first validation problem as an envelope (all of them, joined, in the message)."""
    errors = list(errors)
    if not errors:
        return error_body("invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return error_body(
            f"the request body is not valid JSON ({detail})", "invalid_request_error", None, "invalid_json"
        )
    messages, param = [], None
    for item in errors:
        loc = [str(part) for part in item.get("loc", ()) if part != "body"]
        name = ".".join(loc)
        if param is None and name:
            param = loc[0]
        got = item.get("input")
        shown = (
            json.dumps(got)[:80]
            if isinstance(got, str | int | float | bool | type(None))
            else type(got).__name__
        )
        messages.append(f"`{name or 'body'}`: {item.get('msg')} (got {shown})")
    if first.get("type") == "missing" and not [p for p in first.get("loc", ()) if p != "body"]:
        messages = ["the request body must be a JSON object"]
    return error_body(
        "invalid request: " + "; ".join(messages), "invalid_request_error", param, "invalid_value"
    )


class _Guard:
    """ASGI middleware in front of every route: API key, then a size limit on request bodies."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        key = self.settings.api_key
        if key and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + key.encode()):
                reason = "missing" if not given else "wrong"
                error = APIError(
                    401,
                    f"{reason} API key: send the header `Authorization: Bearer <key>` with the key given to "
                    "`ina serve --api_key` (or the INA_API_KEY environment variable)",
                    "invalid_request_error",
                    None,
                    "invalid_api_key",
                )
                await _send_json(send, error.status, error.body(), {"www-authenticate": "Bearer"})
                return
        limit = self.settings.max_body_bytes
        too_big = APIError(
            413,
            f"the request body must be at most {limit} bytes on this server (--max_body_bytes)",
            "invalid_request_error",
            None,
            "request_too_large",
        )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _send_json(send, 413, too_big.body())
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await _send_json(send, 413, too_big.body())
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(
    send: Any, status: int, content: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
