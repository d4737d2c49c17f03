"""uvicorn's h11 protocol with the limits uvicorn lacks, and every answer it gives itself in the envelope.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``), but a client that opens a connection
and never finishes its request head or body keeps it (and an open file) for ever; enough of them use up
the process's file limit, and then nobody, ``/health`` included, can connect. :class:`EnvelopeHTTPProtocol`
adds, per connection:

- a deadline for the request head (``timeout_header``, from the connection's start or the previous answer)
  and one for the body (``timeout_body``, from the end of the head): past it, a 408 and the connection closed;
- a bound on open connections (``max_connections``, below the file limit): at the bound, the connection
  that has been sending its request the longest is closed (a 503 if it had sent part of one), so a flood
  of slow clients cannot lock out quick ones; if every connection is busy with a request, the new one
  gets the 503;
- one log line per kind of event per interval (:class:`~ina.serve.api.events.EventLog`), not per connection.

Requests uvicorn cannot parse (a malformed ``Content-Length``, a broken request line) get the JSON
envelope every route uses instead of uvicorn's plain text. Use :func:`limited_protocol` as uvicorn's ``http``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ina.serve.api.errors import error_body
from ina.serve.api.events import EventLog, QuietLogger

MALFORMED = (
    "malformed HTTP request ({reason}): send a valid request line and headers; `Content-Length`, when given, "
    "must be one non-negative integer"
)
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open."""

    timeout_header: float = 10.0
    timeout_body: float = 30.0
    max_connections: int | None = None


class EnvelopeHTTPProtocol(H11Protocol):  # type: ignore[misc]
    """One connection: uvicorn's h11 protocol, with read deadlines, the connection bound and the envelope."""

    limits = ConnectionLimits()
    events = EventLog(logging.getLogger("ina.serve"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = QuietLogger(self.logger, self.events)
        self.reading: str | None = None  # "head" or "body" while the client sends a request, else None
        self.reading_since = 0.0
        self.received = 0  # bytes received while reading the current head or body
        self.deadline: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ uvicorn's protocol, extended

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read("head")
        most = self.limits.max_connections
        if most is not None and len(self.connections) > most:
            self._make_room(most)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_reading()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        reason = msg.rstrip(".") or "unparseable"
        message = MALFORMED.format(reason=reason)
        self._answer(400, error_body(message, "invalid_request_error", None, "invalid_http_request"))

    # ------------------------------------------------------------------ deadlines

    def _follow(self) -> None:
        """Start or stop the read deadline as the client moves between head, body and waiting."""
        if self.transport.is_closing():
            self._stop_reading()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self.reading != "head":
                self._read("head")
        elif state is h11.SEND_BODY:
            if self.reading != "body":
                self._read("body")
        else:  # the whole request is in (or the connection is ending): no deadline while it is answered
            self._stop_reading()

    def _read(self, part: str) -> None:
        self._stop_reading()
        self.reading, self.reading_since, self.received = part, self.loop.time(), 0
        seconds = self.limits.timeout_header if part == "head" else self.limits.timeout_body
        self.deadline = self.loop.call_later(seconds, self._expired)

    def _stop_reading(self) -> None:
        self.reading = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expired(self) -> None:
        part, received = self.reading, self.received
        self.deadline = None
        self._stop_reading()
        if self.transport.is_closing() or part is None:
            return
        if part == "head" and not received:  # opened (or kept alive) and silent: close it quietly
            self.events.note(
                "idle", f"closed connections that sent nothing for {self.limits.timeout_header:g} s"
            )
            self.transport.close()
            return
        flag, seconds = ("--timeout_header", self.limits.timeout_header)
        what = "the request line and headers"
        if part == "body":
            flag, seconds, what = "--timeout_body", self.limits.timeout_body, "the request body"
        message = (
            f"{what} must arrive within {seconds:g} s on this server ({flag}); {received} bytes came in that "
            "time: send the whole request at once"
        )
        self.events.note(
            f"timeout_{part}",
            f"closed a connection that had sent {received} bytes of {what} in {seconds:g} s ({flag})",
        )
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self._answer(408, error_body(message, "invalid_request_error", None, "request_timeout"))

    # ------------------------------------------------------------------ the connection bound

    def _make_room(self, most: int) -> None:
        """Close the connection that has been sending its request the longest, else refuse this one."""
        sending = [
            c for c in self.connections if isinstance(c, EnvelopeHTTPProtocol) and c.reading and c is not self
        ]
        if not sending:
            self.events.note(
                "refused",
                f"refused connections: all {most} allowed (--max_connections) are busy with requests",
            )
            self._answer(
                503,
                error_body(
                    f"the server holds its limit of {most} open connections (--max_connections), each busy with "
                    "a request; retry in a moment",
                    "server_error",
                    None,
                    "too_many_connections",
                ),
                retry_after=1,
            )
            return
        oldest = min(sending, key=lambda c: c.reading_since)
        age = self.loop.time() - oldest.reading_since
        self.events.note(
            "shed",
            f"at the limit of {most} open connections (--max_connections), closed the ones that had been sending "
            f"their request the longest (this one for {age:.1f} s)",
        )
        oldest._shed(most)

    def _shed(self, most: int) -> None:
        self.connections.discard(self)  # counted out now: the transport closes on the loop's next turn
        self._stop_reading()
        if not self.received:  # an idle or silent connection: nothing to answer
            self.transport.close()
            return
        message = (
            f"the server holds its limit of {most} open connections (--max_connections) and this one had been "
            "sending its request the longest; send requests at once and retry"
        )
        self._answer(503, error_body(message, "server_error", None, "too_many_connections"), retry_after=1)

    # ------------------------------------------------------------------ answers uvicorn does not route

    def _answer(self, status: int, body: dict[str, Any], retry_after: int | None = None) -> None:
        """Write ``body`` as a complete JSON response on the raw transport and close the connection."""
        data = json.dumps(body).encode("ascii")
        head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b""))]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        if retry_after is not None:
            head.append(b"retry-after: %d\r\n" % retry_after)
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(data),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + data)
        self.transport.close()


def limited_protocol(limits: ConnectionLimits, events: EventLog | None = None) -> type[EnvelopeHTTPProtocol]:
    """:class:`EnvelopeHTTPProtocol` bound to ``limits`` (one class per server: its events are counted together)."""
    log = events or EventLog(logging.getLogger("ina.serve"))
    return type("LimitedHTTPProtocol", (EnvelopeHTTPProtocol,), {"limits": limits, "events": log})
