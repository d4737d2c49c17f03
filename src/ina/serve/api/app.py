"""The app factory: ``create_app(engine, settings)`` assembles the routers, middleware and error handlers.

The app keeps no model state of its own (nothing at module level): the engine and the settings live
on ``app.state``, where the routes' dependencies find them, so tests can run several apps side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ina.serve.api import responses
from ina.serve.api.errors import install_error_handlers
from ina.serve.api.events import EventLog, loop_exception_handler
from ina.serve.api.middleware import Guard
from ina.serve.api.routes import ROUTERS
from ina.serve.api.routes.ui import static_dir
from ina.serve.engine import Engine
from ina.serve.settings import ServeSettings


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """A new FastAPI app serving ``engine`` under ``settings`` (API key, caps, body limit)."""

    events = EventLog(logging.getLogger("ina.serve"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        # asyncio logs a traceback for every failed accept() (e.g. out of open files): once per interval here
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        loop.set_exception_handler(loop_exception_handler(events))
        yield
        loop.set_exception_handler(previous)

    from ina import __version__

    # No /docs: Swagger UI loads its assets from a CDN, and this server must work offline. No redirects
    # for a trailing slash (a 307 makes a client send its POST twice, or fail): the Guard strips it.
    app = FastAPI(
        title="ina serve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.engine, app.state.settings, app.state.created = engine, settings, responses.now()
    app.state.events = events  # what clients did to the connections, by kind (`ina.serve.server`)
    install_error_handlers(app)
    app.add_middleware(Guard, settings=settings)  # type: ignore[arg-type]
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app
