"""Run an app with uvicorn in a background thread (tests, the benchmark, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def uvicorn_config(app: Any, host: str, port: int, log_level: str) -> Any:
    """uvicorn's configuration for ``app`` under its ``ServeSettings`` (``app.state.settings``): the keep-alive
    timeout, the listen backlog, and the protocol with the read deadlines and the connection bound
    (`ina.serve.api.protocol`). `ina serve` and :class:`LiveServer` both serve through it."""
    import uvicorn

    from ina.serve.api.protocol import ConnectionLimits, limited_protocol
    from ina.serve.settings import listen_backlog, open_file_limit

    settings = app.state.settings
    limits = ConnectionLimits(settings.timeout_header, settings.timeout_body, settings.max_connections)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        http=limited_protocol(limits, app.state.events),
        timeout_keep_alive=settings.timeout_keep_alive,  # type: ignore[arg-type]  # a float works
        backlog=listen_backlog(open_file_limit()),
    )


class LiveServer:
    """uvicorn serving ``app`` on ``host``:``port`` (a free loopback port by default) in a daemon thread.

    with LiveServer(create_app(engine, settings)) as live:
        httpx.get(f"{live.url}/health")
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning"
    ) -> None:
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.events = app.state.events  # what clients did to the server, counted by kind
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, log_level))
        self.thread = threading.Thread(target=self.server.run, name="ina-serve-uvicorn", daemon=True)

    def start(self, timeout: float = 30.0) -> LiveServer:
        """Start serving; returns once uvicorn accepts connections."""
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_healthy(url: str, process: Any = None, timeout: float = 90.0, poll: float = 0.2) -> None:
    """Wait until ``GET {url}/health`` answers 200 (e.g. an ``ina serve`` started as a subprocess).

    Raises ``RuntimeError`` with the process's output if ``process`` (a ``subprocess.Popen``) exits first
    or ``timeout`` seconds pass.
    """
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        exited = process is not None and process.poll() is not None
        if exited or time.time() > deadline:
            output = process.stdout.read() if process is not None and process.stdout else ""
            raise RuntimeError(f"ina serve did not come up at {url}:\n{output}")
        time.sleep(poll)
