"""uvicorn's HTTP protocol, except that a request it cannot parse is answered with the JSON envelope.

uvicorn answers an unparseable request (a malformed ``Content-Length``, a broken request line) itself,
in plain text, before any app sees it; :class:`EnvelopeHTTPProtocol` keeps uvicorn's parser (httptools
when installed, else h11) and answers such requests with the error envelope every route uses.
Pass it as uvicorn's ``http``: ``uvicorn.run(app, http=EnvelopeHTTPProtocol)``.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from ina.serve.api.errors import error_body

MALFORMED = (
    "malformed HTTP request ({reason}): send a valid request line and headers; `Content-Length`, when given, "
    "must be one non-negative integer"
)


class EnvelopeHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's own protocol; only its plain-text "400 Bad Request" becomes the JSON envelope."""

    def send_400_response(self, msg: str) -> None:
        reason = msg.rstrip(".") or "unparseable"
        body = error_body(
            MALFORMED.format(reason=reason), "invalid_request_error", None, "invalid_http_request"
        )
        data = json.dumps(body).encode("ascii")
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(data)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + data)
        self.transport.close()
