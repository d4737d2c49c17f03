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


# The code of an error raised without one, by HTTP status: every envelope has a non-null ``code``.
CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unsupported",
    429: "rate_limited",
    499: "client_closed_request",
    500: "internal_error",
    501: "not_implemented",
    503: "overloaded",
}


RETRY_AFTER_S = 1  # what a client told to retry later (503, 429) is asked to wait, in seconds


def code_for(status: int) -> str:
    """The default ``code`` of an error answered with ``status``."""
    return CODES.get(status, "invalid_request" if status < 500 else "internal_error")


class APIError(Exception):
    """An error answered with HTTP ``status`` and the JSON envelope above."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code or code_for(status)
        self.headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}

    def body(self) -> dict[str, Any]:
        """The JSON envelope."""
        return error_body(self.message, self.type, self.param, self.code)


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str = "invalid_request"
) -> dict[str, Any]:
    """``{"error": {...}}`` with all four keys present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ErrorResponse(JSONResponse):
    """The envelope as JSON, ASCII-escaped: a message quoting a request's text (a lone surrogate, say)
    can always be sent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request is malformed or breaks a rule (the message names the rule and the fix)."""
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str, available: list[str], why: str | None = None) -> APIError:
    """404: ``model`` is neither the base nor a loaded adapter (``why``: the reason it was not loaded)."""
    reason = f"; it is not served: {why}" if why else ""
    return APIError(
        404,
        f"`model` must be one of {available}; got {model!r}{reason}. Adapters are loaded at start-up with "
        "`ina serve --adapter NAME=PATH`",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def from_engine(error: EngineError, unserved: dict[str, str] | None = None) -> APIError:
    """The HTTP answer to an engine error: 404 unknown model, 400 bad prompt, 422 unsupported, 503 busy.

    ``unserved``: model ids a user may expect, with the reason they are not served (`ServeSettings`).
    """
    if isinstance(error, UnknownModelError):
        return model_not_found(error.model, error.available, (unserved or {}).get(error.model))
    if isinstance(error, OverloadedError):  # a full queue: worth retrying soon
        return APIError(503, str(error), "server_error", None, error.code, retry_after=RETRY_AFTER_S)
    if isinstance(error, PromptError):
        return invalid_request(str(error), error.param, error.code or "invalid_value")
    if isinstance(error, UnsupportedError):
        return APIError(422, str(error), "invalid_request_error", error.param, error.code)
    return APIError(500, str(error), "server_error", None, "engine_error")


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
    body = (
        error.body()
        if isinstance(error, APIError)
        else error_body(str(error), "server_error", None, "internal_error")
    )
    headers = error.headers if isinstance(error, APIError) else None
    return ErrorResponse(body, status_code=status, headers=headers)


async def _engine_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, EngineError):  # registered for EngineError only
        return await _unexpected(request, error)
    settings = getattr(request.app.state, "settings", None)
    return await _api_error(request, from_engine(error, getattr(settings, "unserved", None)))


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    details = error.errors() if isinstance(error, RequestValidationError) else []
    return ErrorResponse(_validation_envelope(details), status_code=400)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, StarletteHTTPException):  # registered for HTTPException only
        return await _unexpected(request, error)
    if error.status_code == 404:
        message = f"no route {request.method} {request.url.path}; the API is described at /openapi.json"
    elif error.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(error.detail)
    code = code_for(error.status_code)
    if error.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
        message = (
            "the request body could not be read as JSON: numbers may have at most 4300 digits and arrays or "
            "objects may nest at most about 1000 deep"
        )
        code = "invalid_json"
    kind = "invalid_request_error" if error.status_code < 500 else "server_error"
    body = error_body(message, kind, None, code)
    return ErrorResponse(body, status_code=error.status_code, headers=error.headers)


async def _client_gone(request: Request, error: Exception) -> JSONResponse:
    body = error_body("client closed the request", "invalid_request_error", None, code_for(499))
    return ErrorResponse(body, status_code=499)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    message = f"internal error: {type(error).__name__}: {error}"
    return ErrorResponse(error_body(message, "server_error", None, "internal_error"), status_code=500)


def _validation_envelope(errors: Any) -> dict[str, Any]:
    """The first validation problem as an envelope (all of them, joined, in the message)."""
    errors = list(errors)
    if not errors:
        return error_body("invalid request body", "invalid_request_error", None, "invalid_value")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "unsupported":  # an OpenAI field this server does not implement
        where = f"`{'.'.join(loc)}`: " if len(loc) > 1 else ""
        return error_body(where + str(first.get("msg")), "invalid_request_error", loc[0], "unsupported")
    if first.get("type") == "extra_forbidden":
        name = ".".join(loc)
        return error_body(
            f"`{name}` is not a field of this request; leave it out (the fields are listed at /openapi.json)",
            "invalid_request_error",
            loc[0] if loc else None,
            "unknown_field",
        )
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
        shown = _shown(item.get("input"))
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        if item.get("type") == "string_unicode":  # pydantic's words for a lone surrogate
            message = "must be valid Unicode text; it holds a lone surrogate (send UTF-8 or a complete pair)"
        messages.append(f"`{name or 'body'}`: {message} (got {shown})")
    if first.get("type") == "missing" and not [p for p in first.get("loc", ()) if p != "body"]:
        messages = ["the request body must be a JSON object"]
    return error_body(
        "invalid request: " + "; ".join(messages), "invalid_request_error", param, "invalid_value"
    )


def _shown(value: Any) -> str:
    """A request value, short, for an error message (its type for containers and huge numbers)."""
    if isinstance(value, str):
        return json.dumps(value[:80]) + ("..." if len(value) > 80 else "")
    if isinstance(value, bool | float | type(None)) or (isinstance(value, int) and value.bit_length() < 256):
        return json.dumps(value)
    return type(value).__name__
