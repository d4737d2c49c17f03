"""One error envelope for every route, shaped like OpenAI's so its clients raise the right exception.

{"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "..."}}

:func:`install_error_handlers` answers every failure with it: our own :class:`APIError`, the
engine's errors, request validation, unknown routes, a client gone, anything unexpected.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ina.serve.engine import EngineError, OverloadedError, PromptError, UnknownModelError, UnsupportedError

logger = logging.getLogger("ina.serve")


class APIError(Exception):
    """An error answered with HTTP ``status`` and the JSON envelope above."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON envelope."""
        return error_body(self.message, self.type, self.param, self.code)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {...}}`` with all four keys present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or breaks a rule (the message names the rule and the fix)."""
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, available: list[str]) -> APIError:
    """404: ``model`` is neither the base nor a loaded adapter."""
    return APIError(
        404,
        f"`model` must be one of {available}; got {model!r}. Adapters are loaded at start-up with "
        "`ina serve --adapter NAME=PATH`",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def from_engine(error: EngineError) -> APIError:
    """The HTTP answer to an engine error: 404 unknown model, 400 bad prompt, 422 unsupported, 503 busy."""
    if isinstance(error, UnknownModelError):
        return model_not_found(error.model, error.available)
    if isinstance(error, OverloadedError):
        return APIError(503, str(error), "server_error", None, error.code)
    if isinstance(error, PromptError):
        return invalid_request(str(error), error.param, error.code)
    if isinstance(error, UnsupportedError):
        return APIError(422, str(error), "invalid_request_error", error.param, error.code)
    return APIError(500, str(error), "server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure on ``app`` with the envelope."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    status = error.status if isinstance(error, APIError) else 500
    body = error.body() if isinstance(error, APIError) else error_body(str(error), "server_error")
    return JSONResponse(body, status_code=status)


async def _engine_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, EngineError):  # registered for EngineError only
        return await _unexpected(request, error)
    return await _api_error(request, from_engine(error))


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    details = error.errors() if isinstance(error, RequestValidationError) else []
    return JSONResponse(_validation_envelope(details), status_code=400)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, StarletteHTTPException):  # registered for HTTPException only
        return await _unexpected(request, error)
    if error.status_code == 404:
        message = f"no route {request.method} {request.url.path}; the API is described at /openapi.json"
    elif error.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(error.detail)
    kind = "invalid_request_error" if error.status_code < 500 else "server_error"
    return JSONResponse(error_body(message, kind), status_code=error.status_code, headers=error.headers)


async def _client_gone(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(error_body("client closed the request", "invalid_request_error"), status_code=499)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    message = f"internal error: {type(error).__name__}: {error}"
    return JSONResponse(error_body(message, "server_error"), status_code=500)


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
