"""Logging what clients do to the server once per interval per kind of event, never once per connection.

A flood of slow or malformed connections would otherwise write a line (or a traceback) for each one:
:class:`EventLog` logs the first event of a kind at once, counts the others for ``interval_s`` and then
logs one line saying how many there were.

    events = EventLog(logging.getLogger("ina.serve"))
    events.note("timeout_header", "closed a connection that sent no complete request head in 10 s")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

INTERVAL_S = 10.0


class EventLog:
    """Counts events by kind and logs each kind at most once per ``interval_s`` (with the count held back)."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S) -> None:
        self.logger, self.interval_s = logger, interval_s
        self.counts: dict[str, int] = {}  # kind -> every event so far (tests and /health read it)
        self._last: dict[str, float] = {}  # kind -> when it was last logged
        self._held: dict[str, tuple[int, int, str]] = {}  # kind -> (events held back, level, last message)

    def note(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        """One event of ``kind``: logged now if none was logged in the last interval, else counted."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        last = self._last.get(kind)
        if last is None or now - last >= self.interval_s:
            self._emit(kind, message, level, now)
            return
        held, _, _ = self._held.get(kind, (0, level, message))
        if held == 0:  # the first one held back: report the count when the interval ends
            self._later(last + self.interval_s - now, kind)
        self._held[kind] = (held + 1, level, message)

    def _emit(self, kind: str, message: str, level: int, now: float) -> None:
        held, _, _ = self._held.pop(kind, (0, level, message))
        self._last[kind] = now
        more = f" (and {held} more like it in the last {self.interval_s:g} s)" if held else ""
        self.logger.log(level, "%s%s", message, more)

    def _flush(self, kind: str) -> None:
        held, level, message = self._held.get(kind, (0, logging.WARNING, ""))
        if held:
            self._held[kind] = (held - 1, level, message)  # the one logged now is among them
            self._emit(kind, message, level, time.monotonic())

    def _later(self, delay: float, kind: str) -> None:
        # without an event loop (note() called from a plain thread) the count goes out with the next line
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(max(0.0, delay), self._flush, kind)


class QuietLogger:
    """A logger whose warnings go through an :class:`EventLog` (keyed by their message's format string).

    uvicorn's protocol logs one warning per bad request ("Invalid HTTP request received."); given this
    as its logger, a flood of them becomes one line per interval. Everything else passes through.
    """

    def __init__(self, logger: logging.Logger, events: EventLog) -> None:
        self._logger, self._events = logger, events

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        if self._logger.isEnabledFor(logging.WARNING):
            self._events.note(f"uvicorn: {message}", message % args if args else message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def loop_exception_handler(events: EventLog) -> Any:
    """An event-loop exception handler that sends asyncio's complaints (e.g. ``accept()`` failing with
    "Too many open files", once per listening socket per second, with a traceback each) through ``events``."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = str(context.get("message", "event loop error"))
        detail = f": {type(error).__name__}: {error}" if error is not None else ""
        events.note(f"asyncio: {message}", f"{message}{detail}", logging.ERROR)

    return handle
