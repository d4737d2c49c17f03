"""ASGI middleware in front of every route: the path and method made plain, the API key, then a size
limit on request bodies."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ina.serve.api.errors import APIError
from ina.serve.settings import ServeSettings

# Routes reachable without the API key: the health probe and the UI's own files (they hold no data;
# the UI asks for the key and sends it with every API call).
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[..., Awaitable[None]]], Awaitable[None]
]


class Guard:
    """Serves ``/v1/models/`` as ``/v1/models`` and ``HEAD`` as ``GET`` without a body, then refuses
    requests without the API key (401) and bodies over ``max_body_bytes`` (413)."""

    def __init__(self, app: ASGIApp, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = plain(scope)
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        key = self.settings.api_key
        if key and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(bearer_token(given), key.encode()):
                reason = "missing" if not given else "wrong"
                error = APIError(
                    401,
                    f"{reason} API key: send the header `Authorization: Bearer <key>` with the key given to "
                    "`ina serve --api_key` (or the INA_API_KEY environment variable)",
                    "invalid_request_error",
                    None,
                    "invalid_api_key",
                )
                await send_json(send, error.status, error.body(), {"www-authenticate": "Bearer"})
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
        if length is not None and not length.isdigit():  # the HTTP parser refuses most of these first
            malformed = APIError(
                400,
                f"`Content-Length` must be one non-negative integer; got {length[:40]!r}",
                "invalid_request_error",
                None,
                "invalid_http_request",
            )
            await send_json(send, 400, malformed.body())
            return
        # more than 18 digits is over any limit (and int() refuses 4,300 digits or more)
        if length is not None and (len(length) > 18 or int(length) > limit):
            await send_json(send, 413, too_big.body())
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Read the whole body (counting, so a chunked upload cannot pass the limit), then replay it.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await send_json(send, 413, too_big.body())
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


def plain(scope: dict[str, Any]) -> dict[str, Any]:
    """``scope`` with one trailing slash taken off the path, and ``HEAD`` asked as ``GET``.

    A copy: uvicorn keeps the original, whose method ``HEAD`` makes it send the answer's headers only
    (RFC 9110: HEAD is GET without the body, wherever GET is served).
    """
    path, method = scope.get("path", ""), scope.get("method")
    if not (len(path) > 1 and path.endswith("/")) and method != "HEAD":
        return scope
    scope = dict(scope)
    if len(path) > 1 and path.endswith("/"):
        scope["path"] = path[:-1]
        raw = scope.get("raw_path")
        if isinstance(raw, bytes) and raw.endswith(b"/"):
            scope["raw_path"] = raw[:-1]
    if method == "HEAD":
        scope["method"] = "GET"
    return scope


def bearer_token(header: bytes) -> bytes:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme in any case, RFC 7235), else b""."""
    scheme, _, token = header.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


async def send_json(
    send: Any, status: int, content: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """Answer with ``content`` as JSON straight from the middleware (no route runs)."""
    data = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
