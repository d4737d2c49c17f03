"""One error envelope for every route, shaped like OpenAI's so its clients raise the right exception.

{"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "..."}}
"""

from __future__ import annotations

from typing import Any


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
