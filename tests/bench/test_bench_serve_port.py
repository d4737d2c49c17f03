"""`ina bench serve --port`: the port of the `ina serve` the benchmark starts (default: any free one)."""

from __future__ import annotations

import socket

import pytest

from ina.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_server_listens_on_the_port_given(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    argv = [
        "bench",
        "serve",
        "--tiny",
        "--port",
        str(port),
        "--concurrency",
        "1",
        "--requests_per_client",
        "1",
    ]
    assert main([*argv, "--max_tokens", "2", "--num_threads", "1"]) == 0
    captured = capsys.readouterr()
    assert f"at http://127.0.0.1:{port}\n" in captured.err  # the URL every request of the run went to
    assert "models ['tiny-llama', 'ina03', 'ina09']" in captured.out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--url", "http://127.0.0.1:8000", "--port", "8001"], "--port 8001 is the port of the server this benchmark starts; drop --port or --url"),
        (["--tiny", "--port", "70000"], "--port must be an integer in 0..65535 (0: any free port); got 70000"),
        (["--tiny", "--port", "-1"], "--port must be an integer in 0..65535"),
    ],
)  # fmt: skip
def test_a_bad_port_is_one_line_before_any_server_starts(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "serve", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") <= 2 and "Traceback" not in err


def test_a_port_in_use_is_refused_before_any_server_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["bench", "serve", "--tiny", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port} is already in use on 127.0.0.1" in err and "starting" not in err
