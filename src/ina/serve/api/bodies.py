"""CPU work of a request off the event loop: decoding, parsing and validating a large JSON body (a second or
more for a 1 MB body of small objects), tokenising, building a large answer. On the event loop it would
stall every other request, ``/health`` included.

``APIRouter(route_class=OffLoopBody)`` reads the bodies of a router's routes this way; a route keeps its
signature (``body: schemas.ChatCompletionRequest``), so the OpenAPI schema is unchanged. :func:`off_loop`
runs other work so. Such work runs one piece at a time per app: Python work on several threads would
share the interpreter lock with the event loop and slow it down as much as running on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from ina.serve.api.errors import APIError, invalid_request

INLINE_BYTES = 64 * 1024  # bodies up to this size parse in well under a millisecond: on the loop
T = TypeVar("T")


async def off_loop(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a worker thread, after the app's CPU work before it (one piece at a time)."""
    state = request.app.state
    if getattr(state, "cpu_work", None) is None:
        state.cpu_work = anyio.CapacityLimiter(1)
    return await anyio.to_thread.run_sync(fn, *args, limiter=state.cpu_work)


class OffLoopBody(APIRoute):
    """A route whose JSON body is decoded, parsed and validated off the event loop.

    The validated model is left where FastAPI looks for the parsed body (Starlette caches ``Request.json()``
    in ``_json``), and FastAPI accepts an instance of the model as it is, without validating it again.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        model = self.body_field.field_info.annotation if self.body_field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler

        async def handle(request: Request) -> Response:
            data = await request.body()  # already read (and bounded) by the Guard middleware
            if data:
                kind = request.headers.get("content-type")
                if len(data) <= INLINE_BYTES:
                    request._json = parse_body(model, data, kind)
                else:
                    request._json = await off_loop(request, parse_body, model, data, kind)
            return await handler(request)

        return handle


def parse_body(model: type[BaseModel], data: bytes, content_type: str | None) -> BaseModel:
    """``data`` as ``model``; a 415 for a body that is not JSON, a 400 naming what is wrong otherwise."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")):
        raise APIError(
            415,
            f"`Content-Type` must be application/json; got {media[:80]!r} (with curl, add "
            "-H 'Content-Type: application/json')",
            "invalid_request_error",
            None,
            "unsupported_media_type",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid_request(
            f"the request body must be UTF-8 text (JSON is UTF-8, RFC 8259); byte 0x{data[error.start]:02x} at "
            f"position {error.start} is not valid UTF-8: send the body encoded as UTF-8",
            None,
            "invalid_encoding",
        ) from None
    try:
        value = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        raise invalid_request(
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno} "
            f"(character {error.pos})",
            None,
            "invalid_json",
        ) from None
    except (ValueError, RecursionError) as error:  # 4,300+ digit integers; arrays nested ~1,000 deep
        why = "it nests arrays or objects too deep" if isinstance(error, RecursionError) else str(error)
        raise invalid_request(
            f"the request body could not be read as JSON: {why}; numbers may have at most 4300 digits and "
            "arrays or objects may nest at most about 1000 deep",
            None,
            "invalid_json",
        ) from None
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from None
    except RecursionError:
        raise invalid_request(
            "the request body nests arrays or objects too deep to validate", None, "invalid_json"
        ) from None
